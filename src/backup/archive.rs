//! The header of a pg_dump custom-format archive, read from the first bytes of
//! the dump as they stream past, to learn which server and which pg_dump made
//! it (for the manifest) without a second connection to the database.
//!
//! Only the header is read (magic, versions, sizes, creation time, database
//! name, server version, pg_dump version): never the archive's contents. The
//! bytes examined are the plaintext of the dump, kept in memory only.

/// How many leading bytes of the dump are kept to read the header from.
pub(crate) const HEADER_WINDOW: usize = 4096;

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArchiveHeader {
    /// The archive format version, e.g. `1.14.0`.
    pub(crate) format_version: String,
    pub(crate) database: String,
    /// The server's `server_version` at dump time.
    pub(crate) server_version: String,
    /// The version of the pg_dump that wrote it.
    pub(crate) pg_dump_version: String,
}

/// Reads the header at the start of `bytes`; `None` when they do not start
/// with a complete custom-format header.
pub(crate) fn parse(bytes: &[u8]) -> Option<ArchiveHeader> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(5)? != b"PGDMP" {
        return None;
    }
    let (vmaj, vmin, vrev) = (r.byte()?, r.byte()?, r.byte()?);
    let int_size = r.byte()? as usize;
    if int_size == 0 || int_size > 8 {
        return None;
    }
    let _off_size = r.byte()?;
    let _format = r.byte()?;
    // Archive 1.15 (PostgreSQL 16) stores the compression algorithm as one
    // byte; earlier versions the level as an integer.
    if (vmaj, vmin) >= (1, 15) {
        r.byte()?;
    } else {
        r.int(int_size)?;
    }
    for _ in 0..7 {
        r.int(int_size)?; // creation time: sec, min, hour, mday, mon, year, isdst
    }
    Some(ArchiveHeader {
        format_version: format!("{vmaj}.{vmin}.{vrev}"),
        database: r.string(int_size)?,
        server_version: r.string(int_size)?,
        pg_dump_version: r.string(int_size)?,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    /// pg_dump's WriteInt: a sign byte, then `size` bytes little-endian.
    fn int(&mut self, size: usize) -> Option<i64> {
        let negative = self.byte()? != 0;
        let mut value: i64 = 0;
        for (i, b) in self.take(size)?.iter().enumerate() {
            value |= i64::from(*b) << (8 * i);
        }
        Some(if negative { -value } else { value })
    }

    /// pg_dump's WriteStr: a length (−1 for NULL), then the bytes.
    fn string(&mut self, int_size: usize) -> Option<String> {
        let len = self.int(int_size)?;
        if len < 0 {
            return Some(String::new());
        }
        let len = usize::try_from(len).ok().filter(|l| *l <= 256)?;
        Some(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: i64) -> Vec<u8> {
        let mut out = vec![u8::from(v < 0)];
        out.extend_from_slice(&v.unsigned_abs().to_le_bytes()[..4]);
        out
    }

    fn string(s: &str) -> Vec<u8> {
        let mut out = int(s.len() as i64);
        out.extend_from_slice(s.as_bytes());
        out
    }

    fn header(vmin: u8) -> Vec<u8> {
        let mut h = b"PGDMP".to_vec();
        h.extend_from_slice(&[1, vmin, 0, 4, 8, 1]);
        if vmin >= 15 {
            h.push(1);
        } else {
            h.extend(int(-1));
        }
        for v in [5, 4, 3, 2, 1, 126, 0] {
            h.extend(int(v));
        }
        h.extend(string("keycloak"));
        h.extend(string("15.14 (Debian 15.14-1)"));
        h.extend(string("15.14"));
        h.extend_from_slice(b"rest of the archive");
        h
    }

    #[test]
    fn reads_the_header_of_both_layouts() {
        for vmin in [14, 16] {
            let h = parse(&header(vmin)).unwrap();
            assert_eq!(h.format_version, format!("1.{vmin}.0"));
            assert_eq!(h.database, "keycloak");
            assert_eq!(h.server_version, "15.14 (Debian 15.14-1)");
            assert_eq!(h.pg_dump_version, "15.14");
        }
    }

    #[test]
    fn refuses_what_is_not_a_whole_header() {
        let h = header(14);
        assert!(parse(&h[..40]).is_none(), "truncated");
        assert!(parse(b"PGDMQ").is_none());
        assert!(
            parse(b"--\n-- PostgreSQL database dump").is_none(),
            "plain format"
        );
        let mut bad = h.clone();
        bad[8] = 200; // int size
        assert!(parse(&bad).is_none());
    }
}
