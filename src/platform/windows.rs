//! Windows: elevation, Job Objects, console control events.
//!
//! The only `unsafe` code of the crate: calls into `kernel32`/`advapi32` through `windows-sys`, each
//! with the handles it opens closed by an owning wrapper.
#![allow(unsafe_code)]

use std::path::Path;

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::Security::{
    GetTokenInformation, TOKEN_ELEVATION, TOKEN_QUERY, TokenElevation,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
    SetInformationJobObject, TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_SET_QUOTA, PROCESS_TERMINATE,
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
