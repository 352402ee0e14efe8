//! Windows ACLs, read as SDDL: may anyone but SYSTEM, Administrators and TrustedInstaller change
//! a file or folder?
//!
//! The boot task runs agent-bootstrap.exe as SYSTEM at every startup, from the path install ran it
//! from. If another account (the agent's service account, Users) could replace that file or rename
//! a folder above it, every startup would run that account's program as SYSTEM: the Windows twin of
//! [`crate::fsx::check_root_only_program`]. The security descriptor is read by
//! `platform::windows::sddl_of` and judged here, a pure function, so the decision is tested on every
//! platform with descriptors written by hand (Wine does not enforce ACLs).

/// SIDs allowed to own and change what SYSTEM runs: SYSTEM, the Administrators group and the
/// TrustedInstaller service (which owns Windows' own files).
const TRUSTED: &[&str] = &[
    "SY",
    "S-1-5-18",
    "BA",
    "S-1-5-32-544",
    "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464",
];

/// Access rights that let a trustee replace a file, or rename or add to a folder: write data / add
/// file, append / add subdirectory, delete child, delete, write DAC, write owner, generic write and
/// generic all.
pub const CHANGE_MASK: u32 =
    0x2 | 0x4 | 0x40 | 0x1_0000 | 0x4_0000 | 0x8_0000 | 0x4000_0000 | 0x1000_0000;
/// For a folder further up: what lets a trustee rename or replace the folder below it (delete,
/// delete child, write DAC or owner, generic all), not adding entries of its own (Users may add
/// folders to `C:\`).
pub const ANCESTOR_MASK: u32 = 0x40 | 0x1_0000 | 0x4_0000 | 0x8_0000 | 0x1000_0000;

/// An SDDL right (two letters) as an access mask.
fn right(code: &str) -> u32 {
    match code {
        "GA" => 0x1000_0000,
        "GW" => 0x4000_0000,
        "FA" => 0x1f_01ff,
        "FW" => 0x12_0116,
        "WD" => 0x4_0000,
        "WO" => 0x8_0000,
        "SD" => 0x1_0000,
        "DC" => 0x2, // ADS_RIGHT_DS_CREATE_CHILD, which SDDL maps to FILE_ADD_FILE's bit
        "CC" => 0x1,
        "LC" => 0x4,
        "SW" => 0x8,
        "RP" => 0x10,
        "WP" => 0x20,
        "DT" => 0x40,
        "CR" => 0x100,
        _ => 0,
    }
}

/// Who, besides the trusted (and `also_trusted`: the elevated administrator running install, who
/// can change anything anyway), may change the object the SDDL describes: its owner when that is not
/// trusted, and each trustee of an allow ACE (not inherit-only) with a right in `mask`
/// ([`CHANGE_MASK`] or [`ANCESTOR_MASK`]). A descriptor without a DACL (`D:NO_ACCESS_CONTROL` or
/// none) gives everyone every right.
pub fn untrusted_writers(sddl: &str, mask: u32, also_trusted: Option<&str>) -> Vec<String> {
    let mut who = vec![];
    let upper = sddl.to_ascii_uppercase();
    let also = also_trusted.map(str::to_ascii_uppercase);
    let trusted = |sid: &str| TRUSTED.contains(&sid) || also.as_deref() == Some(sid);
    if let Some(owner) = section(&upper, 'O')
        && !trusted(owner)
    {
        who.push(format!("owner {owner}"));
    }
    let Some(dacl) = section(&upper, 'D') else {
        who.push("everyone (no DACL)".into());
        return who;
    };
    if dacl.contains("NO_ACCESS_CONTROL") {
        who.push("everyone (no DACL)".into());
        return who;
    }
    for ace in dacl.split('(').skip(1) {
        let ace = ace.trim_end_matches(')');
        let fields: Vec<&str> = ace.split(';').collect();
        let [kind, flags, rights, _, _, trustee, ..] = fields[..] else {
            continue;
        };
        if kind != "A" || flags.contains("IO") || trusted(trustee) {
            continue;
        }
        let rights_mask = if let Some(hex) = rights.strip_prefix("0X") {
            u32::from_str_radix(hex, 16).unwrap_or(u32::MAX)
        } else {
            rights
                .as_bytes()
                .chunks(2)
                .map(|c| right(std::str::from_utf8(c).unwrap_or("")))
                .fold(0, |a, b| a | b)
        };
        if rights_mask & mask != 0 && !who.iter().any(|w| w == trustee) {
            who.push(trustee.to_owned());
        }
    }
    who
}

/// The text of one SDDL section (`O:`, `G:`, `D:`, `S:`), up to the next section.
fn section(sddl: &str, name: char) -> Option<&str> {
    let start = sddl.find(&format!("{name}:"))? + 2;
    let rest = &sddl[start..];
    // The next section starts with a letter and a colon outside any ACE.
    let mut depth = 0;
    let bytes = rest.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'O' | b'G' | b'D' | b'S' if depth == 0 && bytes.get(i + 1) == Some(&b':') && i > 0 => {
                return Some(&rest[..i]);
            }
            _ => {}
        }
    }
    Some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_files_is_trusted() {
        // What `Get-Acl 'C:\Program Files\agent-bootstrap'` shows (inherited from Program Files).
        let sddl = "O:S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464\
                    G:S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464\
                    D:PAI(A;;FA;;;S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464)\
                    (A;OICIIO;GA;;;S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464)\
                    (A;;0x1301bf;;;SY)(A;OICIIO;GA;;;SY)(A;;0x1301bf;;;BA)(A;OICIIO;GA;;;BA)\
                    (A;;0x1200a9;;;BU)(A;OICIIO;GXGR;;;BU)(A;OICIIO;GA;;;CO)\
                    (A;;0x1200a9;;;AC)(A;OICIIO;GXGR;;;AC)";
        assert_eq!(
            untrusted_writers(sddl, CHANGE_MASK, None),
            Vec::<String>::new()
        );
    }

    #[test]
    fn users_who_can_write_or_an_untrusted_owner_are_named() {
        // C:\agent-bootstrap made by an administrator under C:\ (Users may create and append).
        let sddl = "O:BAG:S-1-5-21-1-2-3-513D:AI(A;ID;FA;;;BA)(A;ID;FA;;;SY)(A;ID;0x1200a9;;;BU)\
                    (A;ID;0x4;;;AU)(A;CIID;DC;;;BU)(A;OICIIOID;GA;;;CO)";
        assert_eq!(untrusted_writers(sddl, CHANGE_MASK, None), vec!["AU", "BU"]);
        // The service account's own folder.
        let sddl = "O:NSG:NSD:(A;;FA;;;NS)(A;;FA;;;SY)";
        assert_eq!(
            untrusted_writers(sddl, CHANGE_MASK, None),
            vec!["owner NS", "NS"]
        );
        // No DACL: everyone may do anything.
        assert_eq!(
            untrusted_writers("O:BAD:NO_ACCESS_CONTROL", CHANGE_MASK, None),
            vec!["everyone (no DACL)"]
        );
        // Deny ACEs and read-only grants do not count.
        assert!(
            untrusted_writers(
                "O:SYD:(D;;FA;;;WD)(A;;FR;;;WD)(A;;0x1200a9;;;BU)",
                CHANGE_MASK,
                None
            )
            .is_empty()
        );
        // C:\ lets Authenticated Users add folders: harmless above the program's own folder.
        let root = "O:SYG:SYD:(A;OICI;FA;;;BA)(A;OICI;FA;;;SY)(A;OICI;0x1200a9;;;BU)(A;;0x4;;;AU)\
                    (A;OICIIO;SDGXGWGR;;;AU)";
        assert_eq!(untrusted_writers(root, CHANGE_MASK, None), vec!["AU"]);
        assert!(untrusted_writers(root, ANCESTOR_MASK, None).is_empty());
        // The elevated administrator running install owns what it made (as under Wine).
        let own =
            "O:S-1-5-21-0-0-0-1000D:(A;;FA;;;SY)(A;;FA;;;S-1-5-21-0-0-0-1000)(A;;0x1200a9;;;WD)";
        assert_eq!(
            untrusted_writers(own, CHANGE_MASK, None),
            vec!["owner S-1-5-21-0-0-0-1000", "S-1-5-21-0-0-0-1000"]
        );
        assert!(untrusted_writers(own, CHANGE_MASK, Some("S-1-5-21-0-0-0-1000")).is_empty());
    }
}
