//! An error and its causes on one line, for logs and command-line messages.
//! Many libraries' own text stops short: tokio-postgres says "error performing
//! TLS handshake" or "db error", reqwest "error sending request"; the reason
//! (an unknown issuer, the server's message) is further down the chain.

/// `error`, then each cause not already part of the text so far, joined with ": ".
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct E {
        text: &'static str,
        #[source]
        source: Option<Box<E>>,
    }

    #[test]
    fn causes_follow_unless_already_said() {
        let inner = E {
            text: "unknown issuer",
            source: None,
        };
        let middle = E {
            text: "handshake failed",
            source: Some(Box::new(inner)),
        };
        let outer = E {
            text: "connect",
            source: Some(Box::new(middle)),
        };
        assert_eq!(
            with_causes(&outer),
            "connect: handshake failed: unknown issuer"
        );
        let repeats = E {
            text: "tls: unknown issuer",
            source: Some(Box::new(E {
                text: "unknown issuer",
                source: None,
            })),
        };
        assert_eq!(with_causes(&repeats), "tls: unknown issuer");
    }
}
