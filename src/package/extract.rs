//! Unpacking agent archives as hostile input.
//!
//! The archive comes from the network. Every entry is checked before it is written: paths must be
//! relative and stay inside the root (no `..`, no absolute paths), symbolic links must point inside the
//! root, hard links must name an entry inside it, and device files or FIFOs are refused. Permissions
//! keep only the `rwx` bits (no setuid). Extraction always goes into a private staging directory; the
//! caller moves it into place only after the SHA-256 matched.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("archive entry '{entry}' would be written outside the agent directory")]
    Traversal { entry: String },
    #[error("archive entry '{entry}' is a link to '{target}', outside the agent directory")]
    LinkOutside { entry: String, target: String },
    #[error(
        "archive entry '{entry}' has unsupported type {kind} (only files, directories and links)"
    )]
    UnsupportedType { entry: String, kind: String },
    #[error("the archive is not a valid {format}")]
    Corrupt {
        format: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("could not write '{path}' while extracting")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the archive is not a valid zip file")]
    Zip(#[source] zip::result::ZipError),
    #[error("the archive contains no agent (no entry under bin/)")]
    NotAnAgent,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
}

/// A relative path with `.` removed, refusing anything that could leave the root.
pub fn safe_relative(raw: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether a symlink at `entry` (relative to the root) pointing to `target` stays inside the root.
pub fn link_stays_inside(entry: &Path, target: &Path) -> bool {
    if target.is_absolute() || target.has_root() {
        return false;
    }
    let mut depth: Vec<&std::ffi::OsStr> = entry
        .parent()
        .map(|p| {
            p.components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(n) => depth.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Streams a `.tar.gz` into `dest`, checking every entry. `reader` is consumed only as far as the
/// archive goes; the caller drains the rest.
pub fn untar_gz(reader: impl Read, dest: &Path) -> Result<Stats, ExtractError> {
    let gz = flate2::read::GzDecoder::new(reader);
    let mut archive = tar::Archive::new(gz);
    archive.set_preserve_permissions(false);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let corrupt = |source| ExtractError::Corrupt {
        format: "gzip-compressed tar archive",
        source,
    };
    let mut stats = Stats::default();
    let mut saw_bin = false;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path().map_err(corrupt)?.into_owned();
        let shown = raw.display().to_string();
        let rel = safe_relative(&raw).ok_or_else(|| ExtractError::Traversal {
            entry: shown.clone(),
        })?;
        if rel.as_os_str().is_empty() {
            continue; // the archive root "./"
        }
        if rel.starts_with("bin") {
            saw_bin = true;
        }
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous | T::Directory | T::GNUSparse => {}
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if !link_stays_inside(&rel, &target) {
                    return Err(ExtractError::LinkOutside {
                        entry: shown,
                        target: target.display().to_string(),
                    });
                }
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if safe_relative(&target).is_none_or(|t| t.as_os_str().is_empty()) {
                    return Err(ExtractError::LinkOutside {
                        entry: shown,
                        target: target.display().to_string(),
                    });
                }
            }
            other => {
                return Err(ExtractError::UnsupportedType {
                    entry: shown,
                    kind: format!("{other:?}"),
                });
            }
        }
        let size = entry.header().size().unwrap_or(0);
        let unpacked = entry.unpack_in(dest).map_err(|source| {
            // tar reports both I/O on our side and a broken stream as io::Error; a broken gzip
            // stream shows up as InvalidData/InvalidInput/UnexpectedEof.
            match source.kind() {
                std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::InvalidInput
                | std::io::ErrorKind::UnexpectedEof => corrupt(source),
                _ => ExtractError::Write {
                    path: dest.join(&rel),
                    source,
                },
            }
        })?;
        if !unpacked {
            return Err(ExtractError::Traversal { entry: shown });
        }
        stats.files += 1;
        stats.bytes += size;
    }
    if !saw_bin {
        return Err(ExtractError::NotAnAgent);
    }
    Ok(stats)
}

/// Unpacks a `.zip` (the Windows agent package) from a file, checking every entry.
pub fn unzip(file: &Path, dest: &Path) -> Result<Stats, ExtractError> {
    let f = fs_err::File::open(file).map_err(|source| ExtractError::Write {
        path: file.to_owned(),
        source,
    })?;
    let mut archive =
        zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(ExtractError::Zip)?;
    let mut stats = Stats::default();
    let mut saw_bin = false;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(ExtractError::Zip)?;
        let shown = String::from_utf8_lossy(entry.name_raw()).into_owned();
        // Windows packages use backslashes in some tools' output; treat both as separators.
        let normalized = shown.replace('\\', "/");
        let rel = safe_relative(Path::new(&normalized))
            .filter(|_| entry.enclosed_name().is_some())
            .ok_or_else(|| ExtractError::Traversal {
                entry: shown.clone(),
            })?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        if entry.is_symlink() {
            return Err(ExtractError::UnsupportedType {
                entry: shown,
                kind: "symlink".to_owned(),
            });
        }
        if rel.starts_with("bin") {
            saw_bin = true;
        }
        let out = dest.join(&rel);
        let write_err = |source| ExtractError::Write {
            path: out.clone(),
            source,
        };
        if entry.is_dir() {
            fs_err::create_dir_all(&out).map_err(write_err)?;
            continue;
        }
        if let Some(parent) = out.parent() {
            fs_err::create_dir_all(parent).map_err(write_err)?;
        }
        let mut w = fs_err::File::create(&out).map_err(write_err)?;
        let n = std::io::copy(&mut entry, &mut w).map_err(|source| {
            if source.kind() == std::io::ErrorKind::InvalidData {
                ExtractError::Corrupt {
                    format: "zip archive",
                    source,
                }
            } else {
                write_err(source)
            }
        })?;
        #[cfg(unix)]
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            fs_err::set_permissions(&out, std::fs::Permissions::from_mode(mode & 0o777))
                .map_err(write_err)?;
        }
        stats.files += 1;
        stats.bytes += n;
    }
    if !saw_bin {
        return Err(ExtractError::NotAnAgent);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let raw = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        gz.finish().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    }

    /// Writes a raw header name, bypassing the builder's own path checks, as an attacker would.
    fn raw_entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
    ) {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(kind);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }

    #[test]
    fn extracts_agent_layout_with_exec_bits_and_no_setuid() {
        use std::os::unix::fs::PermissionsExt;
        let data = tar_gz(|b| {
            file(b, "./bin/Agent.Listener", b"#!/bin/sh\n", 0o4755);
            file(b, "./config.sh", b"#!/bin/sh\n", 0o755);
            file(b, "./license.html", b"x", 0o644);
        });
        let dir = tempfile::tempdir().unwrap();
        let stats = untar_gz(&data[..], dir.path()).unwrap();
        assert_eq!(stats.files, 3);
        let mode = std::fs::metadata(dir.path().join("bin/Agent.Listener"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn refuses_parent_dir_traversal() {
        let data = tar_gz(|b| {
            file(b, "bin/x", b"", 0o644);
            raw_entry(b, "../evil", tar::EntryType::Regular, None);
        });
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("root");
        std::fs::create_dir(&inner).unwrap();
        let e = untar_gz(&data[..], &inner).unwrap_err();
        assert!(matches!(e, ExtractError::Traversal { .. }), "{e:?}");
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn refuses_absolute_paths() {
        let data = tar_gz(|b| raw_entry(b, "/tmp/evil-abs", tar::EntryType::Regular, None));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            untar_gz(&data[..], dir.path()).unwrap_err(),
            ExtractError::Traversal { .. }
        ));
    }

    #[test]
    fn refuses_links_out_of_the_root() {
        for (kind, target) in [
            (tar::EntryType::Symlink, "/etc/passwd"),
            (tar::EntryType::Symlink, "../../outside"),
            (tar::EntryType::Link, "../outside"),
        ] {
            let data = tar_gz(|b| {
                file(b, "bin/x", b"", 0o644);
                raw_entry(b, "bin/link", kind, Some(target));
            });
            let dir = tempfile::tempdir().unwrap();
            let e = untar_gz(&data[..], dir.path()).unwrap_err();
            assert!(
                matches!(e, ExtractError::LinkOutside { .. }),
                "{target}: {e:?}"
            );
        }
    }

    #[test]
    fn accepts_links_inside_the_root() {
        let data = tar_gz(|b| {
            file(b, "bin/real", b"x", 0o644);
            raw_entry(b, "bin/alias", tar::EntryType::Symlink, Some("real"));
            raw_entry(
                b,
                "externals/node",
                tar::EntryType::Symlink,
                Some("../bin/real"),
            );
        });
        let dir = tempfile::tempdir().unwrap();
        untar_gz(&data[..], dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("bin/alias")).unwrap(), b"x");
    }

    #[test]
    fn refuses_devices() {
        let data = tar_gz(|b| raw_entry(b, "bin/dev", tar::EntryType::Char, None));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            untar_gz(&data[..], dir.path()).unwrap_err(),
            ExtractError::UnsupportedType { .. }
        ));
    }

    #[test]
    fn refuses_garbage_and_non_agents() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            untar_gz(&b"not a gzip stream at all"[..], dir.path()).unwrap_err(),
            ExtractError::Corrupt { .. }
        ));
        let data = tar_gz(|b| file(b, "readme.txt", b"x", 0o644));
        assert!(matches!(
            untar_gz(&data[..], dir.path()).unwrap_err(),
            ExtractError::NotAnAgent
        ));
    }

    #[test]
    fn zip_entries_are_checked() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.zip");
        {
            let mut z = zip::ZipWriter::new(std::fs::File::create(&good).unwrap());
            let o = zip::write::SimpleFileOptions::default();
            z.start_file("bin/Agent.Listener.exe", o).unwrap();
            z.write_all(b"MZ").unwrap();
            z.start_file("config.cmd", o).unwrap();
            z.write_all(b"@echo off").unwrap();
            z.finish().unwrap();
        }
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        assert_eq!(unzip(&good, &out).unwrap().files, 2);
        assert_eq!(std::fs::read(out.join("config.cmd")).unwrap(), b"@echo off");

        let bad = dir.path().join("bad.zip");
        {
            let mut z = zip::ZipWriter::new(std::fs::File::create(&bad).unwrap());
            let o = zip::write::SimpleFileOptions::default();
            z.start_file("../evil.txt", o).unwrap();
            z.write_all(b"x").unwrap();
            z.finish().unwrap();
        }
        let out2 = dir.path().join("out2");
        std::fs::create_dir(&out2).unwrap();
        assert!(matches!(
            unzip(&bad, &out2).unwrap_err(),
            ExtractError::Traversal { .. }
        ));
        assert!(!dir.path().join("evil.txt").exists());
    }

    #[test]
    fn link_logic() {
        assert!(link_stays_inside(Path::new("a/b"), Path::new("c")));
        assert!(link_stays_inside(Path::new("a/b"), Path::new("../c")));
        assert!(!link_stays_inside(Path::new("a/b"), Path::new("../../c")));
        assert!(!link_stays_inside(Path::new("b"), Path::new("/abs")));
    }
}
