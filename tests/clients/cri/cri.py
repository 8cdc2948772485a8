#!/usr/bin/env python3
"""A minimal CRI client for the tests, in place of crictl (which Debian 12 does not ship).

It makes the pod sandbox calls a kubelet makes, so containerd's CRI plugin runs
the CNI plugins through go-cni and libcni exactly as it does under Kubernetes.

    cri.py --socket SOCK --gen DIR version
    cri.py --socket SOCK --gen DIR image NAME      ({"id": ""} if the runtime does not have it)
    cri.py --socket SOCK --gen DIR run NAME --cgroup-parent P --log-dir D [--port HOST:CONTAINER]
    cri.py --socket SOCK --gen DIR status ID
    cri.py --socket SOCK --gen DIR stop ID | rm ID | ls

Every command prints one JSON value. A failed call prints the gRPC status to
stderr and exits 1. The stubs are generated from runtime.proto (beside this
file) into DIR with grpc_tools (PyPI grpcio-tools) on first use.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 30  # seconds per call


def stubs(gen):
    if not os.path.exists(os.path.join(gen, "runtime_pb2_grpc.py")):
        from grpc_tools import protoc

        os.makedirs(gen, exist_ok=True)
        code = protoc.main(["protoc", "-I" + HERE, "--python_out=" + gen, "--grpc_python_out=" + gen,
                            os.path.join(HERE, "runtime.proto")])
        if code != 0:
            sys.exit("protoc failed on runtime.proto")
    sys.path.insert(0, gen)
    import runtime_pb2
    import runtime_pb2_grpc

    return runtime_pb2, runtime_pb2_grpc


def netns_of(info):
    """The network namespace path in the sandbox's OCI spec (the verbose status's "info")."""
    try:
        spec = json.loads(info.get("info", "{}")).get("runtimeSpec", {})
    except ValueError:
        return ""
    for ns in spec.get("linux", {}).get("namespaces", []):
        if ns.get("type") == "network":
            return ns.get("path", "")
    return ""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--gen", required=True)
    sub = p.add_subparsers(dest="op", required=True)
    sub.add_parser("version")
    sub.add_parser("image").add_argument("name")
    run = sub.add_parser("run")
    run.add_argument("name")
    run.add_argument("--cgroup-parent", required=True)
    run.add_argument("--log-dir", required=True)
    run.add_argument("--port", action="append", default=[], help="HOST:CONTAINER (tcp)")
    for op in ("status", "stop", "rm"):
        sub.add_parser(op).add_argument("id")
    sub.add_parser("ls")
    args = p.parse_args()

    import grpc

    pb, rpc = stubs(args.gen)
    channel = grpc.insecure_channel("unix://" + args.socket)
    rt = rpc.RuntimeServiceStub(channel)
    try:
        if args.op == "version":
            r = rt.Version(pb.VersionRequest(version="v1"), timeout=TIMEOUT)
            out = {"runtime": r.runtime_name, "version": r.runtime_version, "api": r.runtime_api_version}
        elif args.op == "image":
            r = rpc.ImageServiceStub(channel).ImageStatus(
                pb.ImageStatusRequest(image=pb.ImageSpec(image=args.name)), timeout=TIMEOUT)
            out = {"id": r.image.id, "tags": list(r.image.repo_tags)}
        elif args.op == "run":
            ports = []
            for spec in args.port:
                host, container = spec.split(":")
                ports.append(pb.PortMapping(protocol=pb.TCP, host_port=int(host), container_port=int(container)))
            config = pb.PodSandboxConfig(
                metadata=pb.PodSandboxMetadata(name=args.name, uid="uid-" + args.name, namespace="weft-test"),
                hostname=args.name,
                log_directory=args.log_dir,
                port_mappings=ports,
                linux=pb.LinuxPodSandboxConfig(cgroup_parent=args.cgroup_parent),
            )
            r = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=TIMEOUT)
            out = {"id": r.pod_sandbox_id}
        elif args.op == "status":
            r = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=args.id, verbose=True),
                                    timeout=TIMEOUT)
            out = {
                "id": r.status.id,
                "state": pb.PodSandboxState.Name(r.status.state),
                "ip": r.status.network.ip,
                "netns": netns_of(r.info),
            }
        elif args.op == "stop":
            rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=args.id), timeout=TIMEOUT)
            out = {}
        elif args.op == "rm":
            rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=args.id), timeout=TIMEOUT)
            out = {}
        else:
            r = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=TIMEOUT)
            out = [{"id": s.id, "name": s.metadata.name, "state": pb.PodSandboxState.Name(s.state)}
                   for s in r.items]
    except grpc.RpcError as err:
        sys.stderr.write("%s %s: %s\n" % (args.op, err.code().name, err.details()))
        sys.exit(1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
