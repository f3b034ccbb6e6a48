//! The upstream login's SCRAM client (`upstream::scram::ScramClient`) reading a
//! server's messages: the server-first-message, then the server-final-message.
//!
//! Input: a binding byte (`n`, `y`, or `p` with a certificate hash), then the
//! server-first and the server-final separated by a NUL byte. In the
//! server-final, `@V` becomes the right server signature for the exchange so
//! far (computed here, as the server would), so the fuzzer reaches the accept
//! path as well as the refusals. The client's nonce is `FUZZnonce`.
//!
//! Checked: no panic; a server-first is taken only if it is exactly
//! `r=FUZZnonce<more>,s=<base64>,i=<digits>` with printable nonce characters, a
//! salt and a count from 1 to 1 000 000 — and the same message sent again is
//! always refused; a server-final is accepted only if it is exactly `v=` and
//! the signature of this exchange under the password's keys. `FUZZ_TRACE=1` prints
//! each input's outcome.
#![no_main]

use aws_lc_rs::{hmac, pbkdf2};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use pgwarden::fuzzing::scram_client;

const NONCE: &str = "FUZZnonce";
const PASSWORD: &[u8] = b"pencil and paper";
/// Counts above this are taken but not derived: a million rounds per input would
/// stall the fuzzer, and the parser's bound is what is under test there.
const MAX_DERIVED: u32 = 64;

/// The ServerKey of PASSWORD for this salt and count.
fn server_key(salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations.try_into().unwrap(),
        salt,
        PASSWORD,
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    hmac::sign(&key, b"Server Key").as_ref().to_vec()
}

/// What the server-first must look like to be taken.
fn well_formed(server_first: &[u8]) -> Option<(Vec<u8>, u32)> {
    let text = std::str::from_utf8(server_first).ok()?;
    let mut parts = text.split(',');
    let nonce = parts.next()?.strip_prefix("r=")?;
    let salt = parts.next()?.strip_prefix("s=")?;
    let count = parts.next()?.strip_prefix("i=")?;
    if parts.next().is_some()
        || !nonce.starts_with(NONCE)
        || nonce.len() == NONCE.len()
        || !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        || count.is_empty()
        || !count.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let salt = STANDARD.decode(salt).ok().filter(|s| !s.is_empty())?;
    let count: u32 = count.parse().ok().filter(|c| (1..=1_000_000).contains(c))?;
    Some((salt, count))
}

fuzz_target!(|data: &[u8]| {
    let Some((&binding, rest)) = data.split_first() else {
        return;
    };
    let (server_first, server_final) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let binding = binding % 4;
    // The harness's own view of the exchange, to fill in `@V`.
    let expected = well_formed(server_first);
    let mut final_message = server_final.to_vec();
    let signature = expected.as_ref().filter(|(_, c)| *c <= MAX_DERIVED).map(|(salt, count)| {
        let (gs2, cbind): (&str, Vec<u8>) = match binding {
            0 => ("n,,", vec![]),
            1 => ("y,,", vec![]),
            b => ("p=tls-server-end-point,,", vec![b; 32]),
        };
        let mut c = gs2.as_bytes().to_vec();
        c.extend_from_slice(&cbind);
        let nonce = std::str::from_utf8(server_first).unwrap().split(',').next().unwrap();
        let without_proof = format!("c={},{nonce}", STANDARD.encode(&c));
        let auth_message = format!(
            "n=,r={NONCE},{},{without_proof}",
            std::str::from_utf8(server_first).unwrap()
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, &server_key(salt, *count));
        (without_proof, STANDARD.encode(hmac::sign(&key, auth_message.as_bytes())))
    });
    if let Some((_, sig)) = &signature
        && let Some(at) = final_message.windows(2).position(|w| w == b"@V")
    {
        final_message.splice(at..at + 2, sig.bytes());
    }

    let run = scram_client(binding, NONCE, PASSWORD, server_first, &final_message, MAX_DERIVED);
    if std::env::var_os("FUZZ_TRACE").is_some() {
        eprintln!("{run:?}");
    }
    assert!(run.second_refused, "a second server-first was taken");
    assert_eq!(
        run.first, expected,
        "taken {:?}, expected {:?} for {:?}",
        run.first, expected, String::from_utf8_lossy(server_first)
    );
    match (&signature, &run.client_final, run.accepted) {
        (None, None, None) => {}
        (Some((without_proof, sig)), Some(client_final), Some(accepted)) => {
            let text = std::str::from_utf8(client_final).expect("client-final is text");
            assert!(
                text.starts_with(&format!("{without_proof},p=")),
                "client-final {text:?} is not {without_proof:?} with a proof"
            );
            // Exactly `v=<signature>`, as libpq insists.
            let right = final_message == format!("v={sig}").as_bytes();
            assert_eq!(
                accepted, right,
                "server-final {:?} accepted: {accepted}",
                String::from_utf8_lossy(&final_message)
            );
        }
        other => panic!("the client and the harness disagree on the exchange: {other:?}"),
    }
});
