//! One line per request and one per outcome, appended to `logFile`.
//!
//! Logging never fails a request: a log that cannot be opened or written is
//! skipped (stderr gets one line saying why, which runtimes usually keep).

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// An append-only log file, or nothing.
#[derive(Debug)]
pub struct Log {
    file: Option<File>,
    prefix: String,
}

impl Log {
    /// Opens `path` for appending, creating its directory (mode 0755); `prefix`
    /// starts every line (`weft-net[pid] ADD container=...`).
    pub fn open(path: &Path, prefix: String) -> Self {
        let file = path
            .parent()
            .map_or(Ok(()), |dir| {
                if dir.as_os_str().is_empty() {
                    Ok(())
                } else {
                    fs::create_dir_all(dir)
                }
            })
            .and_then(|()| OpenOptions::new().create(true).append(true).open(path));
        match file {
            Ok(file) => Self {
                file: Some(file),
                prefix,
            },
            Err(e) => {
                eprintln!("weft cni: cannot open the log {}: {e}", path.display());
                Self::none()
            }
        }
    }

    /// A log that writes nothing.
    pub fn none() -> Self {
        Self {
            file: None,
            prefix: String::new(),
        }
    }

    /// Appends one line.
    pub fn line(&mut self, text: &str) {
        if let Some(file) = &mut self.file {
            let line = format!("{} {} {text}\n", timestamp(SystemTime::now()), self.prefix);
            // One write per line, so concurrent plugins do not interleave within a line.
            if file.write_all(line.as_bytes()).is_err() {
                self.file = None;
            }
        }
    }
}

/// `2026-11-23T20:41:07.123Z`.
fn timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days.cast_signed());
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, u32::try_from(m).unwrap_or(1), u32::try_from(d).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_466_467_123);
        assert_eq!(timestamp(t), "2026-11-23T20:41:07.123Z");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn creates_the_directory_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/cni.log");
        let mut log = Log::open(&path, "weft-net[1] ADD container=c1".into());
        log.line("ok");
        let mut again = Log::open(&path, "weft-net[2] DEL container=c1".into());
        again.line("done");
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("weft-net[1] ADD container=c1 ok"), "{}", lines[0]);
        assert!(lines[1].ends_with("DEL container=c1 done"));
    }

    #[test]
    fn an_unwritable_log_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        // A directory under a regular file cannot be created.
        let mut log = Log::open(&file.join("sub/cni.log"), String::new());
        log.line("nothing happens");
    }
}
