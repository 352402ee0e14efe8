//! Windows: elevation, Job Objects, console control events, directories created with their ACL.
//!
//! The only `unsafe` code of the crate: calls into `kernel32`/`advapi32` through `windows-sys`, each
//! with the handles (and `LocalAlloc`ed buffers) it gets freed by an owning wrapper.
#![allow(unsafe_code)]

use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::AsRawHandle;
use std::path::{Path, PathBuf};

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertSecurityDescriptorToStringSecurityDescriptorW,
    ConvertStringSecurityDescriptorToSecurityDescriptorW, GetSecurityInfo, SDDL_REVISION_1,
    SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{
    DACL_SECURITY_INFORMATION, GetTokenInformation, PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES,
    TOKEN_ELEVATION, TOKEN_QUERY, TokenElevation,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateDirectoryW, GetDiskFreeSpaceExW, GetVolumePathNameW,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
    SetInformationJobObject, TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_SET_QUOTA, PROCESS_SYNCHRONIZE, PROCESS_TERMINATE, WaitForSingleObject,
};

use super::Account;

/// A handle closed when dropped.
#[derive(Debug)]
struct Owned(HANDLE);

// SAFETY: a kernel handle may be used and closed from any thread.
unsafe impl Send for Owned {}
// SAFETY: the Job Object calls made through it are thread-safe kernel calls.
unsafe impl Sync for Owned {}

impl Drop for Owned {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the handle was returned open by the API that created it and is closed once.
            unsafe { CloseHandle(self.0) };
        }
    }
}

/// Memory Windows allocated for us with `LocalAlloc`, freed when dropped.
struct Local(*mut core::ffi::c_void);

impl Drop for Local {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from an API documented to allocate it with LocalAlloc.
            unsafe { LocalFree(self.0) };
        }
    }
}

fn wide(path: &Path) -> Vec<u16> {
    path.as_os_str().encode_wide().chain(Some(0)).collect()
}

/// `FILE_FLAG_OPEN_REPARSE_POINT`: a junction or symbolic link is opened itself, never followed.
pub const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
/// `FILE_FLAG_BACKUP_SEMANTICS`: needed to open a directory.
const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
/// `FILE_ATTRIBUTE_REPARSE_POINT`: a junction, symbolic link or other reparse point.
pub const FILE_ATTRIBUTE_REPARSE_POINT: u32 = 0x400;

/// Creates one directory with the security descriptor `sddl` applied by `CreateDirectoryW`
/// itself: the directory never exists with another ACL, not even for an instant. Fails (kind
/// `AlreadyExists`) when anything, a junction included, already has that name.
pub fn create_dir_with_sddl(path: &Path, sddl: &str) -> std::io::Result<()> {
    let text: Vec<u16> = sddl.encode_utf16().chain(Some(0)).collect();
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `text` is NUL-terminated; `sd` receives a LocalAlloc'ed descriptor we free.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            text.as_ptr(),
            SDDL_REVISION_1,
            &mut sd,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let sd = Local(sd);
    let attributes = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: sd.0,
        bInheritHandle: 0,
    };
    let name = wide(path);
    // SAFETY: `name` is NUL-terminated; `attributes` points at a valid descriptor.
    if unsafe { CreateDirectoryW(name.as_ptr(), &attributes) } == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a directory itself (a junction or link in its place is opened, not followed), for reading
/// its attributes and security, and so that it cannot be renamed or deleted while the handle is
/// held (no `FILE_SHARE_DELETE`).
pub fn open_dir_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::windows::fs::OpenOptionsExt;
    const FILE_SHARE_READ: u32 = 1;
    const FILE_SHARE_WRITE: u32 = 2;
    std::fs::OpenOptions::new()
        .read(true)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE)
        .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT | FILE_FLAG_BACKUP_SEMANTICS)
        .open(path)
}

/// Whether the entry at `path` (not what it may point to) is a junction, symbolic link or other
/// reparse point.
pub fn is_reparse_point(meta: &std::fs::Metadata) -> bool {
    use std::os::windows::fs::MetadataExt;
    meta.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT != 0 || meta.file_type().is_symlink()
}

/// The DACL of an open file or directory, as SDDL (`D:P(A;OICI;FA;;;SY)…`).
pub fn dacl_sddl(file: &std::fs::File) -> std::io::Result<String> {
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: the handle is open; `sd` receives a LocalAlloc'ed descriptor we free.
    let code = unsafe {
        GetSecurityInfo(
            file.as_raw_handle() as HANDLE,
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    if code != 0 {
        return Err(std::io::Error::from_raw_os_error(code as i32));
    }
    let sd = Local(sd);
    let mut text: *mut u16 = std::ptr::null_mut();
    let mut len = 0u32;
    // SAFETY: `sd` is a valid descriptor; `text` receives a LocalAlloc'ed string we free.
    let ok = unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            sd.0,
            SDDL_REVISION_1,
            DACL_SECURITY_INFORMATION,
            &mut text,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let text = Local(text.cast());
    // SAFETY: the API wrote a NUL-terminated string of `len` characters (the NUL included).
    let units = unsafe { std::slice::from_raw_parts(text.0.cast::<u16>(), len as usize) };
    let end = units.iter().position(|u| *u == 0).unwrap_or(units.len());
    Ok(String::from_utf16_lossy(&units[..end]))
}

/// The volume `path` is on (`C:\`, or the folder a volume is mounted at), for telling whether a
/// directory can be moved to another by rename.
pub fn volume_of(path: &Path) -> Option<PathBuf> {
    let name = wide(path);
    let mut buf = vec![0u16; 1024];
    // SAFETY: `name` is NUL-terminated; the buffer's length is passed.
    let ok = unsafe { GetVolumePathNameW(name.as_ptr(), buf.as_mut_ptr(), buf.len() as u32) };
    if ok == 0 {
        return None;
    }
    let end = buf.iter().position(|u| *u == 0).unwrap_or(buf.len());
    Some(PathBuf::from(String::from_utf16_lossy(&buf[..end])))
}

/// The bytes free to this account on the volume of `path` (an existing directory).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let name = wide(path);
    let mut available = 0u64;
    // SAFETY: `name` is NUL-terminated; the two totals this caller does not want may be null.
    let ok = unsafe {
        GetDiskFreeSpaceExW(
            name.as_ptr(),
            &mut available,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    (ok != 0).then_some(available)
}

/// Whether a process of this id is running: it can be opened and has not ended (one that cannot be
/// opened for lack of rights exists all the same).
pub fn process_exists(pid: u32) -> bool {
    // SAFETY: opens a process by id with query rights; the handle is closed by `Owned`.
    let process = unsafe {
        OpenProcess(
            PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_SYNCHRONIZE,
            0,
            pid,
        )
    };
    if process.is_null() {
        return std::io::Error::last_os_error().raw_os_error()
            == Some(windows_sys::Win32::Foundation::ERROR_ACCESS_DENIED as i32);
    }
    let process = Owned(process);
    // SAFETY: the handle is open; a zero timeout only polls.
    let waited = unsafe { WaitForSingleObject(process.0, 0) };
    waited == windows_sys::Win32::Foundation::WAIT_TIMEOUT
}

/// Whether this process runs elevated (an administrator past UAC, or SYSTEM).
pub fn elevated() -> bool {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo-handle; `token` receives a handle we own.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return false;
    }
    let token = Owned(token);
    let mut elevation = TOKEN_ELEVATION { TokenIsElevated: 0 };
    let mut len = 0u32;
    // SAFETY: the buffer is a TOKEN_ELEVATION of the size passed.
    let ok = unsafe {
        GetTokenInformation(
            token.0,
            TokenElevation,
            (&mut elevation as *mut TOKEN_ELEVATION).cast(),
            std::mem::size_of::<TOKEN_ELEVATION>() as u32,
            &mut len,
        )
    };
    ok != 0 && elevation.TokenIsElevated != 0
}

pub fn current_account() -> Account {
    let privileged = elevated();
    Account {
        name: std::env::var("USERNAME").unwrap_or_default(),
        id: if privileged { 0 } else { 1 },
        home: std::env::var_os("USERPROFILE").map(Into::into),
        privileged,
    }
}

pub fn hostname() -> String {
    std::env::var("COMPUTERNAME").unwrap_or_default()
}

/// Whether this account may create entries in `dir` (by trying).
pub fn writable(dir: &Path) -> bool {
    tempfile::tempfile_in(dir).is_ok()
}

/// Windows has no uid: ownership is an ACL matter (`crate::fsx`).
pub fn owner_id(_path: &Path) -> Option<u32> {
    None
}

/// A child and everything it starts: a Job Object that kills its members when closed.
#[derive(Debug)]
pub struct ProcessTree {
    job: Owned,
}

impl ProcessTree {
    /// Before the child starts: its own console process group. Windows cannot switch accounts
    /// here (`run_as` is a Unix notion): the agent's scripts run as SYSTEM, its service as the
    /// account configure gives it.
    pub fn prepare(cmd: &mut std::process::Command, _run_as: Option<(u32, u32)>) {
        use std::os::windows::process::CommandExt;
        const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
        cmd.creation_flags(CREATE_NEW_PROCESS_GROUP);
    }

    /// After it started: a new Job Object holding it (what it starts from now on joins too).
    pub fn adopt(pid: u32) -> std::io::Result<Self> {
        // SAFETY: creates an unnamed job with default security; the handle is ours.
        let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if job.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        let job = Owned(job);
        // SAFETY: zeroed is a valid JOBOBJECT_EXTENDED_LIMIT_INFORMATION.
        let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        // SAFETY: the buffer is the structure and size the information class expects.
        let ok = unsafe {
            SetInformationJobObject(
                job.0,
                JobObjectExtendedLimitInformation,
                (&limits as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: opens the child by pid with the rights AssignProcessToJobObject needs.
        let process = unsafe { OpenProcess(PROCESS_SET_QUOTA | PROCESS_TERMINATE, 0, pid) };
        if process.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        let process = Owned(process);
        // SAFETY: both handles are open and ours.
        if unsafe { AssignProcessToJobObject(job.0, process.0) } == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { job })
    }

    /// The gentle stop: a tree has no console event of its own here, so it is terminated.
    pub fn interrupt(&self) {
        self.kill(false);
    }

    /// Terminates every process in the job (Windows has no gentle variant for a tree).
    pub fn kill(&self, _hard: bool) {
        // SAFETY: the job handle is open.
        unsafe { TerminateJobObject(self.job.0, 1) };
    }

    /// No process of the job is left (what the child started has ended too).
    pub fn is_empty(&self) -> bool {
        use windows_sys::Win32::System::JobObjects::{
            JOBOBJECT_BASIC_ACCOUNTING_INFORMATION, JobObjectBasicAccountingInformation,
            QueryInformationJobObject,
        };
        // SAFETY: zeroed is a valid JOBOBJECT_BASIC_ACCOUNTING_INFORMATION.
        let mut info: JOBOBJECT_BASIC_ACCOUNTING_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: the job handle is open; the buffer is the structure and size the information
        // class expects; the returned length is not asked for.
        let ok = unsafe {
            QueryInformationJobObject(
                self.job.0,
                JobObjectBasicAccountingInformation,
                (&mut info as *mut JOBOBJECT_BASIC_ACCOUNTING_INFORMATION).cast(),
                std::mem::size_of::<JOBOBJECT_BASIC_ACCOUNTING_INFORMATION>() as u32,
                std::ptr::null_mut(),
            )
        };
        ok != 0 && info.ActiveProcesses == 0
    }
}

/// Waits for Ctrl-C / Ctrl-Break (reported as SIGINT) or the console closing or the system
/// shutting down (reported as SIGTERM).
pub async fn wait_for_stop_signal() -> i32 {
    use tokio::signal::windows;
    let (Ok(mut c), Ok(mut b), Ok(mut close), Ok(mut shutdown)) = (
        windows::ctrl_c(),
        windows::ctrl_break(),
        windows::ctrl_close(),
        windows::ctrl_shutdown(),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = c.recv() => super::SIGINT,
        _ = b.recv() => super::SIGINT,
        _ = close.recv() => super::SIGTERM,
        _ = shutdown.recv() => super::SIGTERM,
    }
}

/// The owner and DACL of a file or folder, as SDDL (judged by [`crate::acl`]). `None` when they
/// cannot be read.
pub fn sddl_of(path: &Path) -> Option<String> {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Foundation::{ERROR_SUCCESS, LocalFree};
    use windows_sys::Win32::Security::Authorization::{
        ConvertSecurityDescriptorToStringSecurityDescriptorW, GetNamedSecurityInfoW,
        SDDL_REVISION_1, SE_FILE_OBJECT,
    };
    use windows_sys::Win32::Security::{
        DACL_SECURITY_INFORMATION, OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR,
    };
    let wide: Vec<u16> = path.as_os_str().encode_wide().chain(Some(0)).collect();
    let info = OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION;
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `wide` is NUL-terminated; the out-pointers we do not want are null, as allowed; on
    // success `sd` is a LocalAlloc'd descriptor freed below.
    let status = unsafe {
        GetNamedSecurityInfoW(
            wide.as_ptr(),
            SE_FILE_OBJECT,
            info,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    if status != ERROR_SUCCESS || sd.is_null() {
        return None;
    }
    let mut text: *mut u16 = std::ptr::null_mut();
    let mut len = 0u32;
    // SAFETY: `sd` is the descriptor just read; `text` receives a LocalAlloc'd string of `len`
    // UTF-16 units, freed below.
    let ok = unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            sd,
            SDDL_REVISION_1,
            info,
            &mut text,
            &mut len,
        )
    };
    let sddl = (ok != 0 && !text.is_null()).then(|| {
        // SAFETY: the API returned `len` valid UTF-16 units at `text` (without relying on the
        // terminator).
        let units = unsafe { std::slice::from_raw_parts(text, len as usize) };
        String::from_utf16_lossy(units)
            .trim_end_matches('\0')
            .to_owned()
    });
    // SAFETY: both were allocated by the APIs above with LocalAlloc and are freed once.
    unsafe {
        if !text.is_null() {
            LocalFree(text.cast());
        }
        LocalFree(sd.cast());
    }
    sddl
}

/// This process's own account, as a string SID (`S-1-5-18` for SYSTEM). `None` when it cannot be
/// read.
pub fn own_sid() -> Option<String> {
    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
    use windows_sys::Win32::Security::{TOKEN_USER, TokenUser};
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo-handle; `token` receives a handle we own.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return None;
    }
    let token = Owned(token);
    // TOKEN_USER with the SID after it; u64 elements keep the buffer aligned for the struct.
    let mut buf = vec![0u64; 64];
    let mut len = 0u32;
    // SAFETY: the buffer is writable for the size passed.
    let ok = unsafe {
        GetTokenInformation(
            token.0,
            TokenUser,
            buf.as_mut_ptr().cast(),
            (buf.len() * 8) as u32,
            &mut len,
        )
    };
    if ok == 0 {
        return None;
    }
    // SAFETY: on success the buffer starts with a TOKEN_USER whose SID points into the buffer.
    let sid = unsafe { (*(buf.as_ptr() as *const TOKEN_USER)).User.Sid };
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: `sid` is valid while `buf` lives; `text` receives a LocalAlloc'd string.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 || text.is_null() {
        return None;
    }
    // SAFETY: the API returned a NUL-terminated UTF-16 string at `text`.
    let units = unsafe {
        let mut n = 0;
        while *text.add(n) != 0 {
            n += 1;
        }
        std::slice::from_raw_parts(text, n)
    };
    let sid = String::from_utf16_lossy(units);
    // SAFETY: allocated by ConvertSidToStringSidW with LocalAlloc, freed once.
    unsafe { LocalFree(text.cast()) };
    Some(sid)
}
