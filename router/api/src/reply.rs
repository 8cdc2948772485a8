//! What both clients do with a reply once they have its status and body.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ClientError, ProtocolError};
use crate::types::ApiError;

/// The failure an error reply stands for: the router's [`ApiError`] if the
/// body is one, else [`ProtocolError::UnexpectedReply`] with the body's start.
pub(crate) fn error_reply(status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(error) => ClientError::Api { status, error },
        Err(_) => ProtocolError::UnexpectedReply {
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(ERROR_EXCERPT)]).into_owned(),
        }
        .into(),
    }
}

/// A success reply's body as `T`. An empty body reads as JSON `null`, so
/// that a route answering 204 decodes into `()`.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    let body = if body.is_empty() { b"null" } else { body };
    serde_json::from_slice(body).map_err(|e| ProtocolError::Decode(e).into())
}

/// A request body as JSON.
pub(crate) fn encode(req: &impl Serialize) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(req).map_err(|e| ProtocolError::Encode(e).into())
}

/// How much of an unexpected error body to keep.
const ERROR_EXCERPT: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ErrorCode;

    #[test]
    fn error_replies_keep_the_routers_words() {
        let e = error_reply(409, br#"{"error":"no free address is left","code":"exhausted"}"#);
        assert_eq!(e.to_string(), "no free address is left");
        assert!(
            matches!(&e, ClientError::Api { status: 409, error } if error.code == ErrorCode::Exhausted),
            "{e:?}"
        );
        let long = vec![b'x'; 1000];
        match error_reply(502, &long) {
            ClientError::Protocol(ProtocolError::UnexpectedReply { status, body }) => {
                assert_eq!((status, body.len()), (502, ERROR_EXCERPT));
            }
            other => panic!("expected an unexpected reply, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_success_body_is_null() {
        decode::<()>(b"").unwrap();
        assert!(matches!(
            decode::<u32>(b"{"),
            Err(ClientError::Protocol(ProtocolError::Decode(_)))
        ));
    }
}
