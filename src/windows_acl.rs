//! Owner-only access on Windows: the counterpart of modes 0700 and 0600, and what the
//! named pipe's two ends rely on instead of the Unix socket's peer check.
//!
//! Windows decides access from an object's DACL, not from mode bits, and a new file
//! takes its folder's inheritable entries. Under `%APPDATA%` those name the user,
//! SYSTEM and Administrators, but a folder chosen with `MESSAGE_BROKER_RUNTIME_DIR`
//! may let every user in (`C:\temp` lets Users create and modify files). The runtime
//! folder and file hold the broker's token, so they get a *protected* DACL, which no
//! entry of a parent flows into, granting only:
//! - the current user, by the SID in this process's token. Not `OWNER RIGHTS` (`OW`):
//!   that follows the object's owner, which for an elevated process can be the
//!   Administrators group rather than the user, so the user's unelevated clients would
//!   be locked out;
//! - SYSTEM and Administrators, who can take any file anyway (ownership, the backup
//!   privilege), as root can on Unix: leaving them out protects nothing and breaks
//!   backup and antivirus tools. CPython's `os.mkdir(path, 0o700)` grants the same three.
//!
//! The same accounts are what [`is_owner_only`] accepts, so a folder that inherited
//! the usual profile permissions passes and one any other account can reach is refused.
//!
//! The named pipe is stricter, the current user alone (see [`SecurityDescriptor::for_pipe`]),
//! like the Unix socket whose peer must have the broker's uid.

use std::ffi::c_void;
use std::io;
use std::mem::offset_of;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::path::Path;
use std::ptr::null_mut;

use windows_sys::Win32::Foundation::{ERROR_SUCCESS, HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, GetNamedSecurityInfoW,
    GetSecurityInfo, SDDL_REVISION_1, SE_FILE_OBJECT, SE_KERNEL_OBJECT, SetNamedSecurityInfoW,
};
use windows_sys::Win32::Security::{
    ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, DACL_SECURITY_INFORMATION, EqualSid, GetAce,
    GetSecurityDescriptorDacl, GetTokenInformation, IsWellKnownSid, OWNER_SECURITY_INFORMATION,
    PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, TOKEN_QUERY, TOKEN_USER, TokenUser,
    WELL_KNOWN_SID_TYPE, WinBuiltinAdministratorsSid, WinCreatorOwnerRightsSid, WinCreatorOwnerSid,
    WinLocalSystemSid,
};
use windows_sys::Win32::System::SystemServices::{
    ACCESS_ALLOWED_ACE_TYPE, ACCESS_DENIED_ACE_TYPE, ACCESS_DENIED_CALLBACK_ACE_TYPE,
    ACCESS_DENIED_CALLBACK_OBJECT_ACE_TYPE, ACCESS_DENIED_OBJECT_ACE_TYPE,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};
use windows_sys::core::PWSTR;

/// Accounts trusted besides the current user: they can reach every file on the machine.
const TRUSTED_ACCOUNTS: [WELL_KNOWN_SID_TYPE; 2] = [WinLocalSystemSid, WinBuiltinAdministratorsSid];

/// Sets a protected DACL on `path` (a file or a folder) granting full access to the
/// current user, SYSTEM and Administrators only. On a folder the entries are inherited
/// by what is created in it, so a file written there is owner-only from its first byte.
pub(crate) fn restrict_to_owner(path: &Path) -> io::Result<()> {
    let user = CurrentUser::from_process_token()?.sddl_sid()?;
    // `OICI`: inherited by files and folders created inside; meaningless on a file.
    let inheritance = if std::fs::metadata(path)?.is_dir() { "OICI" } else { "" };
    let sddl = format!("D:P(A;{inheritance};FA;;;SY)(A;{inheritance};FA;;;BA)(A;{inheritance};FA;;;{user})");
    let descriptor = SecurityDescriptor::from_sddl(&sddl)?;
    let dacl = descriptor.dacl()?;
    let path = wide_path(path)?;
    // SAFETY: `path` is NUL-terminated and `dacl` points into `descriptor`, both alive
    // for the call; the function copies what it needs. Owner, group and SACL are null:
    // they are left as they are.
    let status = unsafe {
        SetNamedSecurityInfoW(
            path.as_ptr(),
            SE_FILE_OBJECT,
            // PROTECTED: the folder's own inheritable entries no longer apply here.
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            null_mut(),
            null_mut(),
            dacl,
            null_mut(),
        )
    };
    win32_result(status)
}

/// Whether `path` is owned by the current user, SYSTEM or Administrators, and its DACL
/// grants nobody else any access: what lets a pre-existing runtime folder or file be
/// used rather than refused. Entries that only deny are ignored (they take access
/// away); inheritable entries count, since they would open the files created inside.
pub(crate) fn is_owner_only(path: &Path) -> io::Result<bool> {
    let path = wide_path(path)?;
    let mut owner: PSID = null_mut();
    let mut dacl: *mut ACL = null_mut();
    let mut descriptor: PSECURITY_DESCRIPTOR = null_mut();
    // SAFETY: `path` is NUL-terminated; every out-pointer is valid for writing. On
    // success `descriptor` is allocated with LocalAlloc (owned by `_descriptor` below)
    // and `owner` and `dacl` point into it.
    let status = unsafe {
        GetNamedSecurityInfoW(
            path.as_ptr(),
            SE_FILE_OBJECT,
            OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
            &mut owner,
            null_mut(),
            &mut dacl,
            null_mut(),
            &mut descriptor,
        )
    };
    win32_result(status)?;
    let _descriptor = LocalAllocation(descriptor);
    let user = CurrentUser::from_process_token()?;
    // SAFETY: `owner` and `dacl` are null or point into `_descriptor`, alive until the
    // end of this function.
    unsafe { grants_only_trusted(&user, owner, dacl) }
}

/// Whether the kernel object behind `handle` (a connected pipe, say) is owned by the
/// current user, SYSTEM or Administrators. A creator can only make itself, or a group
/// it belongs to, the owner of what it creates, never another user, so this tells our
/// broker's pipe from one another user created first under the same name. The handle
/// needs READ_CONTROL, which GENERIC_READ includes.
pub(crate) fn has_trusted_owner(handle: BorrowedHandle<'_>) -> io::Result<bool> {
    let mut owner: PSID = null_mut();
    let mut descriptor: PSECURITY_DESCRIPTOR = null_mut();
    // SAFETY: `handle` is open for the call; the out-pointers are valid for writing. On
    // success `descriptor` is allocated with LocalAlloc (owned by `_descriptor` below)
    // and `owner` points into it.
    let status = unsafe {
        GetSecurityInfo(
            handle.as_raw_handle(),
            SE_KERNEL_OBJECT,
            OWNER_SECURITY_INFORMATION,
            &mut owner,
            null_mut(),
            null_mut(),
            null_mut(),
            &mut descriptor,
        )
    };
    win32_result(status)?;
    let _descriptor = LocalAllocation(descriptor);
    let user = CurrentUser::from_process_token()?;
    // SAFETY: `owner` is null or points into `_descriptor`, alive until the end of this
    // function.
    Ok(unsafe { user.is_trusted(owner) })
}

/// A self-relative security descriptor built by Windows, freed when dropped.
pub(crate) struct SecurityDescriptor(LocalAllocation);

// SAFETY: the descriptor is a heap block with no tie to the thread that made it. It is
// never written after creation, only read by the calls given `as_ptr`, and freed once,
// by the single owner's Drop.
unsafe impl Send for SecurityDescriptor {}
// SAFETY: as above; shared references only ever read it.
unsafe impl Sync for SecurityDescriptor {}

impl SecurityDescriptor {
    /// The descriptor of the broker's named pipe: a protected DACL with one entry,
    /// full access for the current user. That covers the broker creating further
    /// instances (FILE_CREATE_PIPE_INSTANCE) and the user's clients connecting, while
    /// everyone else is refused both: without it the pipe's default DACL would let
    /// Everyone and Anonymous open it for reading. Remote clients are kept out by
    /// PIPE_REJECT_REMOTE_CLIENTS rather than by denying the NETWORK group here,
    /// which would also lock out the user's own processes started over SSH.
    ///
    /// The owner is named too, the user, rather than left to the token's default
    /// owner (the Administrators group for some elevated tokens): clients check it
    /// ([`has_trusted_owner`]), and no one else can name us owner of their pipe.
    pub(crate) fn for_pipe() -> io::Result<Self> {
        let user = CurrentUser::from_process_token()?.sddl_sid()?;
        Self::from_sddl(&format!("O:{user}D:P(A;;GA;;;{user})"))
    }

    /// The descriptor written in `sddl`, the Security Descriptor Definition Language.
    fn from_sddl(sddl: &str) -> io::Result<Self> {
        let sddl: Vec<u16> = sddl.encode_utf16().chain([0]).collect();
        let mut descriptor: PSECURITY_DESCRIPTOR = null_mut();
        // SAFETY: `sddl` is NUL-terminated and alive for the call; `descriptor` is valid
        // for writing and, on success, receives a LocalAlloc block we own from here on;
        // the size is not wanted (null).
        let converted = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                null_mut(),
            )
        };
        if converted == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(LocalAllocation(descriptor)))
    }

    /// The descriptor, for a SECURITY_ATTRIBUTES given to a call creating an object.
    /// It stays valid while `self` lives; the callee must not write through it.
    pub(crate) fn as_ptr(&self) -> PSECURITY_DESCRIPTOR {
        self.0.0
    }

    /// The DACL inside the descriptor, valid while `self` lives.
    fn dacl(&self) -> io::Result<*mut ACL> {
        let mut present = 0;
        let mut defaulted = 0;
        let mut dacl: *mut ACL = null_mut();
        // SAFETY: the descriptor is valid (built by `from_sddl`); the out-pointers are
        // valid for writing; `dacl` receives a pointer into the descriptor.
        if unsafe { GetSecurityDescriptorDacl(self.as_ptr(), &mut present, &mut dacl, &mut defaulted) } == 0 {
            return Err(io::Error::last_os_error());
        }
        if present == 0 || dacl.is_null() {
            // Every SDDL string given here starts with `D:`; a missing DACL would mean
            // "no change" to SetNamedSecurityInfoW, never "owner only".
            return Err(io::Error::other("the security descriptor has no DACL"));
        }
        Ok(dacl)
    }
}

/// Memory a Windows call allocated with LocalAlloc and handed over; LocalFree on drop.
struct LocalAllocation(*mut c_void);

impl Drop for LocalAllocation {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a call documented to allocate it with LocalAlloc
        // for the caller to free, and this value is its only owner, so it is freed
        // once and never used after. LocalFree ignores null.
        unsafe { LocalFree(self.0) };
    }
}

/// The user this process runs as, read from its token.
struct CurrentUser {
    /// The TOKEN_USER GetTokenInformation wrote, with the SID it points to after it.
    /// `u64` elements keep it aligned for the pointer inside TOKEN_USER.
    token_user: Vec<u64>,
}

impl CurrentUser {
    fn from_process_token() -> io::Result<Self> {
        let mut token: HANDLE = null_mut();
        // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing;
        // `token` is valid for writing and receives a new handle on success.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `token` was just opened and nothing else owns it; OwnedHandle closes it.
        let token = unsafe { OwnedHandle::from_raw_handle(token) };
        let mut needed = 0u32;
        // SAFETY: an empty buffer (null, length 0) only asks for the size, written to
        // `needed`; the call fails with ERROR_INSUFFICIENT_BUFFER, which is expected.
        unsafe { GetTokenInformation(token.as_raw_handle(), TokenUser, null_mut(), 0, &mut needed) };
        if needed == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut token_user = vec![0u64; (needed as usize).div_ceil(size_of::<u64>())];
        // SAFETY: `token_user` is writable for at least `needed` bytes and aligned for
        // TOKEN_USER; `needed` is valid for writing.
        let read = unsafe {
            GetTokenInformation(
                token.as_raw_handle(),
                TokenUser,
                token_user.as_mut_ptr().cast(),
                needed,
                &mut needed,
            )
        };
        if read == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { token_user })
    }

    /// The user's SID, valid while `self` lives (it points into `token_user`).
    fn sid(&self) -> PSID {
        // SAFETY: `token_user` holds the TOKEN_USER the successful call wrote, aligned
        // for it; its heap block does not move while `self` lives.
        unsafe { (*self.token_user.as_ptr().cast::<TOKEN_USER>()).User.Sid }
    }

    /// The SID as SDDL writes it, `S-1-5-21-…`.
    fn sddl_sid(&self) -> io::Result<String> {
        let mut text: PWSTR = null_mut();
        // SAFETY: the SID is valid while `self` lives; `text` is valid for writing and,
        // on success, receives a NUL-terminated LocalAlloc string, freed by `_text`.
        if unsafe { ConvertSidToStringSidW(self.sid(), &mut text) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let _text = LocalAllocation(text.cast());
        // SAFETY: `text` is NUL-terminated, so every index up to the NUL is in bounds.
        let len = (0..).take_while(|&index| unsafe { *text.add(index) } != 0).count();
        // SAFETY: the `len` characters before the NUL are initialised and stay alive
        // (and unchanged) until `_text` is dropped, after the copy below.
        let units = unsafe { std::slice::from_raw_parts(text, len) };
        String::from_utf16(units).map_err(io::Error::other)
    }

    /// Whether `sid` is the current user, SYSTEM or Administrators. A null SID (an
    /// object without an owner) is nobody.
    ///
    /// # Safety
    /// `sid` must be null or point at a valid SID for the duration of the call.
    unsafe fn is_trusted(&self, sid: PSID) -> bool {
        // SAFETY: `sid` is valid when not null (the caller's promise), and so is ours.
        !sid.is_null()
            && unsafe {
                EqualSid(sid, self.sid()) != 0
                    || TRUSTED_ACCOUNTS.iter().any(|&account| IsWellKnownSid(sid, account) != 0)
            }
    }
}

/// Whether `owner` is trusted and every entry of `dacl` that grants anything grants it
/// to a trusted account or to the owner.
///
/// # Safety
/// `owner` must be null or point at a valid SID, and `dacl` be null (a null DACL) or
/// point at a valid ACL, both for the duration of the call.
unsafe fn grants_only_trusted(user: &CurrentUser, owner: PSID, dacl: *const ACL) -> io::Result<bool> {
    // The owner may always rewrite the DACL, so it has to be trusted itself.
    // SAFETY: `owner` is null or valid (the caller's promise).
    if !unsafe { user.is_trusted(owner) } {
        return Ok(false);
    }
    // A null DACL grants everyone everything.
    if dacl.is_null() {
        return Ok(false);
    }
    // SAFETY: `dacl` points at a valid ACL (the caller's promise).
    let entries = unsafe { (*dacl).AceCount };
    for index in 0..entries {
        let mut ace: *mut c_void = null_mut();
        // SAFETY: `index` is below the ACL's entry count; `ace` is valid for writing and
        // receives a pointer to the entry, inside the ACL.
        if unsafe { GetAce(dacl, u32::from(index), &mut ace) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: every entry starts with an ACE_HEADER, and entries are DWORD-aligned.
        let header = unsafe { &*ace.cast::<ACE_HEADER>() };
        match u32::from(header.AceType) {
            ACCESS_DENIED_ACE_TYPE
            | ACCESS_DENIED_OBJECT_ACE_TYPE
            | ACCESS_DENIED_CALLBACK_ACE_TYPE
            | ACCESS_DENIED_CALLBACK_OBJECT_ACE_TYPE => {}
            ACCESS_ALLOWED_ACE_TYPE => {
                // SAFETY: an entry of this type is an ACCESS_ALLOWED_ACE.
                let mask = unsafe { (*ace.cast::<ACCESS_ALLOWED_ACE>()).Mask };
                // SAFETY: its SID starts at `SidStart` and runs to the end of the entry,
                // within the ACL; taken from `ace`, which spans the whole entry.
                let sid: PSID = unsafe { ace.byte_add(offset_of!(ACCESS_ALLOWED_ACE, SidStart)) };
                // SAFETY: `sid` points at the entry's SID, inside the valid ACL.
                let trusted = unsafe { user.is_trusted(sid) || stands_for_owner(sid) };
                if mask != 0 && !trusted {
                    return Ok(false);
                }
            }
            // Object, callback and compound grants are not what file tools write; a
            // grant this check cannot read is treated as a grant to someone else.
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Whether `sid` stands for the owner rather than naming an account: OWNER RIGHTS
/// (the object's owner, already checked) or CREATOR OWNER (replaced by the creator
/// when inherited, and matching nobody on the object itself).
///
/// # Safety
/// `sid` must point at a valid SID for the duration of the call.
unsafe fn stands_for_owner(sid: PSID) -> bool {
    // SAFETY: `sid` is valid (the caller's promise).
    unsafe {
        IsWellKnownSid(sid, WinCreatorOwnerRightsSid) != 0 || IsWellKnownSid(sid, WinCreatorOwnerSid) != 0
    }
}

/// `path` as the NUL-terminated UTF-16 the `W` functions take.
fn wide_path(path: &Path) -> io::Result<Vec<u16>> {
    let mut wide: Vec<u16> = path.as_os_str().encode_wide().collect();
    if wide.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL character"));
    }
    wide.push(0);
    Ok(wide)
}

/// A WIN32_ERROR status (the security-info functions return it rather than setting
/// the last error) as an io result.
fn win32_result(status: u32) -> io::Result<()> {
    if status == ERROR_SUCCESS { Ok(()) } else { Err(io::Error::from_raw_os_error(status as i32)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system's temporary folder, removed when dropped.
    struct TempFolder(std::path::PathBuf);

    impl TempFolder {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!("message-broker-acl-{name}-{}", std::process::id()));
            std::fs::create_dir(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFolder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn set_protected_dacl(path: &Path, sddl: &str) {
        let descriptor = SecurityDescriptor::from_sddl(sddl).unwrap();
        let path = wide_path(path).unwrap();
        // SAFETY: as in `restrict_to_owner`.
        let status = unsafe {
            SetNamedSecurityInfoW(
                path.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                null_mut(),
                null_mut(),
                descriptor.dacl().unwrap(),
                null_mut(),
            )
        };
        win32_result(status).unwrap();
    }

    #[test]
    fn the_current_user_has_a_sid() {
        let sid = CurrentUser::from_process_token().unwrap().sddl_sid().unwrap();
        assert!(sid.starts_with("S-1-"), "{sid}");
    }

    #[test]
    fn a_folder_everyone_can_open_is_refused_until_restricted() {
        let folder = TempFolder::new("restrict");
        let user = CurrentUser::from_process_token().unwrap().sddl_sid().unwrap();
        set_protected_dacl(&folder.0, &format!("D:P(A;OICI;FA;;;{user})(A;OICI;FR;;;WD)"));
        assert!(!is_owner_only(&folder.0).unwrap());

        restrict_to_owner(&folder.0).unwrap();
        assert!(is_owner_only(&folder.0).unwrap());
    }

    #[test]
    fn a_file_created_in_a_restricted_folder_is_owner_only() {
        let folder = TempFolder::new("inherit");
        restrict_to_owner(&folder.0).unwrap();
        let file = folder.0.join("broker-1.json");
        std::fs::write(&file, b"{}").unwrap();
        assert!(is_owner_only(&file).unwrap());

        let user = CurrentUser::from_process_token().unwrap().sddl_sid().unwrap();
        set_protected_dacl(&file, &format!("D:P(A;;FA;;;{user})(A;;FR;;;WD)"));
        assert!(!is_owner_only(&file).unwrap());
        restrict_to_owner(&file).unwrap();
        assert!(is_owner_only(&file).unwrap());
    }

    #[test]
    fn a_missing_path_is_an_error() {
        let folder = TempFolder::new("missing");
        let error = is_owner_only(&folder.0.join("absent")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
