//! The records a spill writes and reads back, in a compact varint format.

use std::hash::BuildHasher as _;
use std::io::{self, BufRead, Read, Write};

use super::super::memory::heap_bytes;
use super::super::summary::{KeyStats, NumberStats};
use crate::model::ddsketch::DdSketch;
use crate::model::{CompactString, ExactSum, plain_ascii};

/// A record an aggregate writes to disk.
pub(crate) trait Record: Sized {
    /// Bytes a table entry of this record takes when read back, beyond its strings.
    const ENTRY_BYTES: usize;
    /// Group numbers are rewritten when files move between aggregates.
    fn group_mut(&mut self) -> &mut u32;
    /// The hash that picks the partition: the same for records that must meet.
    fn hash(&self, seed: u64) -> u64;
    /// Bytes its strings take on the heap when read back.
    fn heap(&self) -> usize;
    fn write(&self, out: &mut impl Write) -> io::Result<()>;
    fn read(input: &mut impl BufRead) -> io::Result<Option<Self>>;
}

/// One of a group's users.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct UserRecord {
    pub(crate) group: u32,
    pub(crate) user: CompactString,
}

/// A metadata key's counts (all but its values) in a group.
#[derive(Debug, Clone)]
pub(crate) struct KeyRecord {
    pub(crate) group: u32,
    pub(crate) key: CompactString,
    pub(crate) stats: KeyStats,
}

/// How often a value occurred under a key in a group.
#[derive(Debug, Clone)]
pub(crate) struct ValueRecord {
    pub(crate) group: u32,
    pub(crate) key: CompactString,
    pub(crate) value: CompactString,
    pub(crate) count: u64,
}

pub(crate) fn hasher(seed: u64) -> foldhash::fast::FixedState {
    foldhash::fast::FixedState::with_seed(seed)
}

impl Record for UserRecord {
    const ENTRY_BYTES: usize = std::mem::size_of::<(u32, CompactString)>();
    fn group_mut(&mut self) -> &mut u32 {
        &mut self.group
    }
    // By user alone: each user's groups are counted in one partition.
    fn hash(&self, seed: u64) -> u64 {
        hasher(seed).hash_one(self.user.as_bytes())
    }
    fn heap(&self) -> usize {
        heap_bytes(&self.user)
    }
    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        write_u32(out, self.group)?;
        write_text(out, &self.user)
    }
    fn read(input: &mut impl BufRead) -> io::Result<Option<Self>> {
        let Some(group) = read_u32_or_end(input)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            group,
            user: read_text(input)?,
        }))
    }
}

impl Record for KeyRecord {
    const ENTRY_BYTES: usize = std::mem::size_of::<((u32, CompactString), KeyStats)>();
    fn group_mut(&mut self) -> &mut u32 {
        &mut self.group
    }
    // By key alone, not group: group numbers change when files move between
    // aggregates, and all records of one (group, key) must meet in one partition.
    fn hash(&self, seed: u64) -> u64 {
        hasher(seed).hash_one(self.key.as_bytes())
    }
    fn heap(&self) -> usize {
        heap_bytes(&self.key)
            + self.stats.numbers.as_ref().map_or(0, |n| {
                let (large, small) = n.sum.parts();
                (large.len() + small.len()) * 8 + n.sketch.bytes()
            })
    }
    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        write_u32(out, self.group)?;
        write_text(out, &self.key)?;
        write_u64(out, self.stats.n)?;
        write_u64(out, self.stats.value_total)?;
        match &self.stats.numbers {
            None => out.write_all(&[0]),
            Some(numbers) => {
                let (large, small) = numbers.sum.parts();
                out.write_all(&[1])?;
                write_f64(out, numbers.min)?;
                write_f64(out, numbers.max)?;
                for partials in [large, small] {
                    write_u32(out, len_u32(partials.len())?)?;
                    partials.iter().try_for_each(|p| write_f64(out, *p))?;
                }
                let sketch = numbers.sketch.to_protobuf();
                write_u32(out, len_u32(sketch.len())?)?;
                out.write_all(&sketch)
            }
        }
    }
    fn read(input: &mut impl BufRead) -> io::Result<Option<Self>> {
        let Some(group) = read_u32_or_end(input)? else {
            return Ok(None);
        };
        let key = read_text(input)?;
        let mut stats = KeyStats {
            n: read_u64(input)?,
            value_total: read_u64(input)?,
            ..KeyStats::default()
        };
        let mut flag = [0u8];
        input.read_exact(&mut flag)?;
        if flag[0] > 0 {
            let (min, max) = (read_f64(input)?, read_f64(input)?);
            let mut read_partials = || {
                let count = read_u32(input)? as usize;
                (0..count)
                    .map(|_| read_f64(input))
                    .collect::<io::Result<Vec<_>>>()
            };
            let large = read_partials()?;
            let small = read_partials()?;
            let mut sketch = vec![0u8; read_u32(input)? as usize];
            input.read_exact(&mut sketch)?;
            let sketch = DdSketch::from_protobuf(&sketch)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            stats.numbers = Some(NumberStats {
                sum: ExactSum::from_parts(large, small),
                min,
                max,
                sketch,
            });
        }
        Ok(Some(Self { group, key, stats }))
    }
}

impl Record for ValueRecord {
    const ENTRY_BYTES: usize = std::mem::size_of::<((u32, CompactString), u64)>();
    fn group_mut(&mut self) -> &mut u32 {
        &mut self.group
    }
    // By key and value, not group (see `KeyRecord::hash`).
    fn hash(&self, seed: u64) -> u64 {
        hasher(seed).hash_one((self.key.as_bytes(), self.value.as_bytes()))
    }
    fn heap(&self) -> usize {
        heap_bytes(&self.value)
    }
    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        write_u32(out, self.group)?;
        write_text(out, &self.key)?;
        write_text(out, &self.value)?;
        write_u64(out, self.count)
    }
    fn read(input: &mut impl BufRead) -> io::Result<Option<Self>> {
        let Some(group) = read_u32_or_end(input)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            group,
            key: read_text(input)?,
            value: read_text(input)?,
            count: read_u64(input)?,
        }))
    }
}

pub(crate) fn len_u32(len: usize) -> io::Result<u32> {
    u32::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a record field over 4 GiB"))
}

/// Integers go out as LEB128, seven bits a byte, low bits first: group numbers,
/// lengths and counts are mostly small, and a byte not written is a byte not read.
pub(crate) fn write_varint(out: &mut impl Write, mut n: u64) -> io::Result<()> {
    let mut bytes = [0u8; 10];
    let mut len = 0;
    while n >= 0x80 {
        bytes[len] = (n as u8) | 0x80;
        n >>= 7;
        len += 1;
    }
    bytes[len] = n as u8;
    out.write_all(&bytes[..=len])
}

pub(crate) fn write_u32(out: &mut impl Write, n: u32) -> io::Result<()> {
    write_varint(out, u64::from(n))
}

pub(crate) fn write_u64(out: &mut impl Write, n: u64) -> io::Result<()> {
    write_varint(out, n)
}

pub(crate) fn write_f64(out: &mut impl Write, x: f64) -> io::Result<()> {
    out.write_all(&x.to_bits().to_le_bytes())
}

pub(crate) fn write_text(out: &mut impl Write, text: &str) -> io::Result<()> {
    write_u32(out, len_u32(text.len())?)?;
    out.write_all(text.as_bytes())
}

/// An integer, or `None` at a clean end of the file (between records).
pub(crate) fn read_varint_or_end(input: &mut impl BufRead) -> io::Result<Option<u64>> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = input.fill_buf()?.first() else {
            return match shift {
                0 => Ok(None),
                _ => Err(io::ErrorKind::UnexpectedEof.into()),
            };
        };
        input.consume(1);
        n |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(Some(n));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "an integer of over 64 bits",
    ))
}

pub(crate) fn read_u32_or_end(input: &mut impl BufRead) -> io::Result<Option<u32>> {
    read_varint_or_end(input)?
        .map(|n| u32::try_from(n).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)))
        .transpose()
}

pub(crate) fn read_u32(input: &mut impl BufRead) -> io::Result<u32> {
    read_u32_or_end(input)?.ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
}

pub(crate) fn read_u64(input: &mut impl BufRead) -> io::Result<u64> {
    read_varint_or_end(input)?.ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
}

pub(crate) fn read_f64(input: &mut impl Read) -> io::Result<f64> {
    let mut bytes = [0u8; 8];
    input.read_exact(&mut bytes)?;
    Ok(f64::from_le_bytes(bytes))
}

pub(crate) fn read_text(input: &mut impl BufRead) -> io::Result<CompactString> {
    let len = read_u32(input)? as usize;
    // Written from a `str` by this module, so it is UTF-8 unless the file was damaged.
    let damaged = |e| io::Error::new(io::ErrorKind::InvalidData, e);
    // Most strings lie whole in the reader's buffer: taken from there, they cost
    // no copy and no allocation beyond the string's own, if it has one.
    if let Some(bytes) = input.fill_buf()?.get(..len) {
        let text = match plain_ascii(bytes) {
            Some(text) => CompactString::from(text),
            None => CompactString::from_utf8(bytes).map_err(damaged)?,
        };
        input.consume(len);
        return Ok(text);
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes)?;
    String::from_utf8(bytes)
        .map(CompactString::from)
        .map_err(|e| damaged(e.utf8_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_read_back_as_written_and_a_cut_one_is_an_error() {
        let numbers = [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX];
        let mut bytes = Vec::new();
        for &n in &numbers {
            write_varint(&mut bytes, n).unwrap();
        }
        assert_eq!(bytes.len(), 1 + 1 + 1 + 2 + 2 + 5 + 10);
        let mut input = &bytes[..];
        for &n in &numbers {
            assert_eq!(read_varint_or_end(&mut input).unwrap(), Some(n));
        }
        assert_eq!(read_varint_or_end(&mut input).unwrap(), None, "a clean end");
        let mut cut = &bytes[bytes.len() - 10..bytes.len() - 7];
        assert_eq!(
            read_varint_or_end(&mut cut).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut too_big = &[0xffu8; 11][..];
        assert_eq!(
            read_varint_or_end(&mut too_big).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
