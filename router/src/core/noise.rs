//! snow's handshakes with randomness from the caller.
//!
//! snow draws the ephemeral keys of a handshake from its resolver's RNG,
//! which by default is the OS's. The cores take their randomness from their
//! caller instead (the daemon seeds them from the OS, the simulator and the
//! tests from a test seed), so [`builder`] gives snow a resolver whose RNG
//! is a ChaCha20 stream keyed with 32 bytes the caller draws for that one
//! handshake; the cryptography itself is snow's (ring where it has it, the
//! default resolver for the rest), as with `snow::Builder::new`.
//!
//! 32 bytes from a CSPRNG per handshake keep the ephemeral keys as
//! unpredictable as snow's own; a seed that repeats (a fixed seed, or one
//! derived from something an attacker knows) would repeat them, which is
//! why only tests and the simulator may pass one.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng as _, SeedableRng as _};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};

/// A snow builder for `params` whose ephemeral keys come from `seed`.
pub fn builder(params: NoiseParams, seed: [u8; 32]) -> snow::Builder<'static> {
    snow::Builder::with_resolver(params, Box::new(SeededResolver::new(seed)))
}

/// snow's usual resolver (ring first, then the default one), with the RNG
/// keyed by the caller.
struct SeededResolver {
    seed: [u8; 32],
    crypto: FallbackResolver,
}

impl SeededResolver {
    fn new(seed: [u8; 32]) -> Self {
        Self {
            seed,
            crypto: FallbackResolver::new(Box::new(RingResolver), Box::new(DefaultResolver)),
        }
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.seed))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        self.crypto.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        self.crypto.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        self.crypto.resolve_cipher(choice)
    }
}

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: &str = "Noise_NN_25519_ChaChaPoly_BLAKE2s";

    /// The first message of an NN handshake is the ephemeral public key.
    fn ephemeral(seed: [u8; 32]) -> Vec<u8> {
        let mut hs = builder(PARAMS.parse().unwrap(), seed).build_initiator().unwrap();
        let mut out = [0u8; 64];
        let n = hs.write_message(&[], &mut out).unwrap();
        out[..n].to_vec()
    }

    #[test]
    fn the_ephemeral_key_comes_from_the_seed_alone() {
        assert_eq!(ephemeral([1; 32]), ephemeral([1; 32]), "the same seed, the same key");
        assert_ne!(ephemeral([1; 32]), ephemeral([2; 32]));
        // And the handshake still completes with snow's own builder on the other side.
        let mut init = builder(PARAMS.parse().unwrap(), [3; 32]).build_initiator().unwrap();
        let mut resp = snow::Builder::new(PARAMS.parse().unwrap()).build_responder().unwrap();
        let (mut a, mut b) = ([0u8; 96], [0u8; 96]);
        let n = init.write_message(&[], &mut a).unwrap();
        resp.read_message(&a[..n], &mut b).unwrap();
        let n = resp.write_message(&[], &mut a).unwrap();
        init.read_message(&a[..n], &mut b).unwrap();
        assert!(init.is_handshake_finished() && resp.is_handshake_finished());
    }
}
