//! Files written atomically: to a temporary name beside the target, renamed into place only
//! when complete. A crash or an error never leaves a half-written file under the final name.

use crate::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file being written; dropped without [`AtomicFile::commit`], it is removed.
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
    /// Where the writeback asked for by [`AtomicFile::start_writeback`] ends.
    written_back: u64,
}

impl AtomicFile {
    pub fn create(dest: impl AsRef<Path>) -> Result<Self> {
        let dest = dest.as_ref().to_path_buf();
        let name = dest
            .file_name()
            .ok_or_else(|| Error::param(format!("output path {} names no file", dest.display())))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = dest.with_file_name(tmp_name);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(AtomicFile {
            dest,
            tmp,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
            written_back: 0,
        })
    }

    /// Asks the kernel to start writing what has been written so far to the disk, without
    /// waiting (Linux `sync_file_range`), so the sync in [`AtomicFile::commit`] waits only for
    /// the tail and the disk works while the rest is made. A hint: where it is refused, the
    /// commit's sync still writes everything and reports any error.
    pub fn start_writeback(&mut self) -> std::io::Result<()> {
        use std::io::Seek;
        let writer = self.writer();
        writer.flush()?;
        let end = writer.stream_position()?;
        if end > self.written_back {
            #[cfg(target_os = "linux")]
            {
                use std::os::fd::AsRawFd;
                let fd = self.writer().get_ref().as_raw_fd();
                let (from, len) = (self.written_back as i64, (end - self.written_back) as i64);
                // SAFETY: a plain system call on an open descriptor this value owns.
                let _ =
                    unsafe { libc::sync_file_range(fd, from, len, libc::SYNC_FILE_RANGE_WRITE) };
            }
            self.written_back = end;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.dest
    }

    pub fn writer(&mut self) -> &mut BufWriter<File> {
        // The writer is only taken by `commit`, which consumes self.
        self.writer.as_mut().expect("writer present until commit")
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("writer present until commit");
        let file = writer
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer().flush()
    }
}

impl std::io::Seek for AtomicFile {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.writer().seek(pos)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.writer = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
