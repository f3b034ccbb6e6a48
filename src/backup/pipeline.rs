//! The dump's way to the destination: pg_dump's output, read from its pipe
//! in memory, encrypted with age to the configured X25519 recipients, and
//! written to a pending object while its SHA-256 and sizes are counted.
//!
//! Plaintext exists only in this process's memory (a read buffer, age's
//! current chunk, and the first bytes kept to read the archive header); all
//! are overwritten before they are dropped. Nothing here writes plaintext
//! anywhere, logs it, or puts it in an error.

use std::io::{self, Read, Write};

use aws_lc_rs::digest;

use super::archive::{self, ArchiveHeader, HEADER_WINDOW};

/// The read buffer: age encrypts in 64 KiB chunks.
const BUFFER: usize = 64 * 1024;

/// What went through.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    /// Plaintext bytes read from pg_dump.
    pub(crate) dump_bytes: u64,
    /// Encrypted bytes written to the destination.
    pub(crate) encrypted_bytes: u64,
    /// SHA-256 of the encrypted bytes, lowercase hex.
    pub(crate) sha256: String,
    /// The archive header, if the dump began with one.
    pub(crate) header: Option<ArchiveHeader>,
}

/// Which side of the pipeline failed. The I/O errors are the pipe's and the
/// destination's own (age's wrapping of the sink's error is undone); none
/// carries a byte of what went through.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PipelineError {
    /// Reading pg_dump's output failed.
    #[error("reading the dump: {0}")]
    Source(#[source] io::Error),
    /// The encryption could not start (e.g. no usable recipient).
    #[error("encrypting: {0}")]
    Encrypt(#[source] age::EncryptError),
    /// Writing to the destination failed.
    #[error("writing to the destination: {0}")]
    Sink(#[source] io::Error),
}

/// Encrypts everything `source` yields to `recipients`, into `sink`.
pub(crate) fn encrypt(
    source: &mut dyn Read,
    recipients: &[age::x25519::Recipient],
    sink: &mut dyn Write,
) -> Result<Written, PipelineError> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(PipelineError::Encrypt)?;
    let mut counted = Counted::new(sink);
    let mut buffer = vec![0u8; BUFFER];
    let mut head = Vec::with_capacity(HEADER_WINDOW);
    let result = copy(&mut counted, encryptor, source, &mut buffer, &mut head);
    let header = archive::parse(&head);
    buffer.fill(0);
    head.fill(0);
    let dump_bytes = result?;
    Ok(Written {
        dump_bytes,
        encrypted_bytes: counted.bytes,
        sha256: hex(counted.hash.finish().as_ref()),
        header,
    })
}

fn copy(
    counted: &mut Counted<'_>,
    encryptor: age::Encryptor,
    source: &mut dyn Read,
    buffer: &mut [u8],
    head: &mut Vec<u8>,
) -> Result<u64, PipelineError> {
    let sink_error = |c: &mut Counted<'_>, e: io::Error| match c.failed.take() {
        Some(inner) => PipelineError::Sink(inner),
        None => PipelineError::Sink(e),
    };
    let mut writer = match encryptor.wrap_output(&mut *counted) {
        Ok(w) => w,
        Err(e) => return Err(sink_error(counted, e)),
    };
    let mut total = 0u64;
    loop {
        let n = match source.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PipelineError::Source(e)),
        };
        let chunk = &buffer[..n];
        let room = HEADER_WINDOW - head.len();
        head.extend_from_slice(&chunk[..n.min(room)]);
        total += n as u64;
        if let Err(e) = writer.write_all(chunk) {
            drop(writer);
            return Err(sink_error(counted, e));
        }
    }
    let result = writer.finish().and_then(|w| w.flush());
    if let Err(e) = result {
        return Err(sink_error(counted, e));
    }
    Ok(total)
}

/// The sink, counting and hashing what reaches it, and remembering its own
/// error (age wraps it).
struct Counted<'a> {
    inner: &'a mut dyn Write,
    hash: digest::Context,
    bytes: u64,
    failed: Option<io::Error>,
}

impl<'a> Counted<'a> {
    fn new(inner: &'a mut dyn Write) -> Self {
        Counted {
            inner,
            hash: digest::Context::new(&digest::SHA256),
            bytes: 0,
            failed: None,
        }
    }
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.hash.update(&buf[..n]);
                self.bytes += n as u64;
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                self.failed = Some(e);
                Err(io::Error::new(kind, "the destination refused a write"))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of everything `r` yields, lowercase hex.
pub fn sha256_of(r: &mut dyn Read) -> io::Result<String> {
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut buffer = vec![0u8; BUFFER];
    loop {
        match r.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hash.update(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex(hash.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn decrypt(cipher: &[u8], identity: &age::x25519::Identity) -> Vec<u8> {
        let d = age::Decryptor::new(cipher).unwrap();
        let mut out = Vec::new();
        d.decrypt(std::iter::once(identity as &dyn age::Identity))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn what_goes_in_comes_out_for_each_recipient_and_is_counted() {
        let (a, b) = (
            age::x25519::Identity::generate(),
            age::x25519::Identity::generate(),
        );
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut cipher = Vec::new();
        let w = encrypt(
            &mut plain.as_slice(),
            &[a.to_public(), b.to_public()],
            &mut cipher,
        )
        .unwrap();
        assert_eq!(w.dump_bytes, plain.len() as u64);
        assert_eq!(w.encrypted_bytes, cipher.len() as u64);
        assert_eq!(w.sha256, sha256_of(&mut cipher.as_slice()).unwrap());
        assert!(w.header.is_none(), "not a pg_dump archive");
        // No 16-byte run of the plaintext appears in the ciphertext.
        assert!(!cipher.windows(16).any(|win| win == &plain[1000..1016]));
        assert_eq!(decrypt(&cipher, &a), plain);
        assert_eq!(decrypt(&cipher, &b), plain);
        // Anyone else cannot.
        let other = age::x25519::Identity::generate();
        let d = age::Decryptor::new(cipher.as_slice()).unwrap();
        assert!(
            d.decrypt(std::iter::once(&other as &dyn age::Identity))
                .is_err()
        );
    }

    #[test]
    fn failures_say_which_side_failed() {
        let r = age::x25519::Recipient::from_str(
            &age::x25519::Identity::generate().to_public().to_string(),
        )
        .unwrap();
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("pipe broke"))
            }
        }
        let mut sink = Vec::new();
        let e = encrypt(&mut Broken, std::slice::from_ref(&r), &mut sink).unwrap_err();
        assert!(matches!(e, PipelineError::Source(_)), "{e}");
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = encrypt(&mut &b"data"[..], std::slice::from_ref(&r), &mut Full).unwrap_err();
        assert!(
            matches!(&e, PipelineError::Sink(inner) if inner.kind() == io::ErrorKind::StorageFull),
            "{e}"
        );
        let e = encrypt(&mut &b"data"[..], &[], &mut sink).unwrap_err();
        assert!(matches!(e, PipelineError::Encrypt(_)), "{e}");
    }
}
