//! ClickHouse's `RowBinary` format, read as it streams in.
//!
//! Each row is its columns one after the other: `UInt64` as 8 little-endian bytes,
//! `String` as its length (unsigned LEB128) then its bytes, `Array(UInt64)` as its
//! length then the numbers. Nothing is escaped, so what a column holds comes back
//! byte for byte.

/// A malformed answer: the server sent something that is not the rows asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the answer is not RowBinary of the expected columns: {0}")]
pub struct Malformed(pub &'static str);

/// Reads columns from the bytes of whole rows. `Ok(None)` means the bytes end
/// inside the value: wait for more.
#[derive(Debug)]
pub struct Columns<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Columns<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.at
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let bytes = self.data.get(self.at..end)?;
        self.at = end;
        Some(bytes)
    }

    fn length(&mut self) -> Result<Option<u64>, Malformed> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&[byte]) = self.take(1) else {
                return Ok(None);
            };
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(Some(value));
            }
        }
        Err(Malformed("a length longer than 64 bits"))
    }

    /// A `UInt64`.
    pub fn u64(&mut self) -> Option<u64> {
        // `take(8)` gives exactly 8 bytes.
        self.take(8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    /// A `String`, as its bytes.
    pub fn string(&mut self) -> Result<Option<&'a [u8]>, Malformed> {
        let Some(length) = self.length()? else {
            return Ok(None);
        };
        Ok(usize::try_from(length).ok().and_then(|n| self.take(n)))
    }

    /// An `Array(UInt64)`.
    pub fn u64_array(&mut self) -> Result<Option<Vec<u64>>, Malformed> {
        let Some(length) = self.length()? else {
            return Ok(None);
        };
        let Some(bytes) = usize::try_from(length)
            .ok()
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| self.take(n))
        else {
            return Ok(None);
        };
        Ok(Some(
            bytes
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
        ))
    }
}

/// Gathers the chunks of an answer and hands out whole rows.
#[derive(Debug, Default)]
pub struct RowBuffer {
    data: Vec<u8>,
    /// Where the first row not yet read starts.
    start: usize,
}

impl RowBuffer {
    /// Appends a chunk of the answer.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.start > 0 && self.start >= self.data.len() / 2 {
            self.data.drain(..self.start);
            self.start = 0;
        }
        self.data.extend_from_slice(chunk);
    }

    /// Reads every whole row buffered with `row`, which returns `Ok(None)` when the
    /// bytes end inside the row; that row is read again when more bytes come.
    ///
    /// # Errors
    ///
    /// What `row` returns.
    pub fn rows<E>(
        &mut self,
        mut row: impl FnMut(&mut Columns<'_>) -> Result<Option<()>, E>,
    ) -> Result<(), E> {
        while self.start < self.data.len() {
            let mut columns = Columns::new(&self.data[self.start..]);
            match row(&mut columns)? {
                Some(()) => self.start += columns.position(),
                None => break,
            }
        }
        Ok(())
    }

    /// Whether every byte was read as part of a whole row.
    pub fn is_drained(&self) -> bool {
        self.start == self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        let mut n = s.len();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(s);
    }

    #[test]
    fn rows_split_anywhere_read_the_same() {
        let long = vec![b'x'; 300];
        let mut answer = Vec::new();
        let mut expected = Vec::new();
        for (name, n) in [
            (&b"page_view"[..], 7u64),
            (&long[..], 1 << 40),
            (&b""[..], 0),
        ] {
            string(&mut answer, name);
            answer.extend_from_slice(&n.to_le_bytes());
            answer.push(2);
            answer.extend_from_slice(&1u64.to_le_bytes());
            answer.extend_from_slice(&u64::MAX.to_le_bytes());
            expected.push((name.to_vec(), n, vec![1, u64::MAX]));
        }
        for cut in 0..answer.len() {
            let mut buffer = RowBuffer::default();
            let mut read = Vec::new();
            for chunk in [&answer[..cut], &answer[cut..]] {
                buffer.feed(chunk);
                buffer
                    .rows(|c| {
                        let Some(name) = c.string()? else {
                            return Ok::<_, Malformed>(None);
                        };
                        let Some(n) = c.u64() else { return Ok(None) };
                        let Some(array) = c.u64_array()? else {
                            return Ok(None);
                        };
                        read.push((name.to_vec(), n, array));
                        Ok(Some(()))
                    })
                    .unwrap();
            }
            assert!(buffer.is_drained(), "cut at {cut}");
            assert_eq!(read, expected, "cut at {cut}");
        }
    }

    #[test]
    fn an_endless_length_is_malformed() {
        let mut columns = Columns::new(&[0xff; 11]);
        assert_eq!(
            columns.string(),
            Err(Malformed("a length longer than 64 bits"))
        );
    }
}
