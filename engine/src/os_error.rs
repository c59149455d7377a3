//! Errors from the system, named the way an operator searches for them: the errno's name,
//! then its text (`ENOSPC (No space left on device)`).

use std::io;

/// `e`'s errno name and text, or its text when it carries no errno.
pub fn describe(e: &io::Error) -> String {
    // Errors that went through glommio keep their kind but not always their errno.
    let code = e.raw_os_error().or(match e.kind() {
        io::ErrorKind::StorageFull => Some(libc::ENOSPC),
        io::ErrorKind::QuotaExceeded => Some(libc::EDQUOT),
        io::ErrorKind::ReadOnlyFilesystem => Some(libc::EROFS),
        io::ErrorKind::FileTooLarge => Some(libc::EFBIG),
        _ => None,
    });
    let Some(code) = code else {
        return e.to_string();
    };
    let name = match code {
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::ENOSPC => "ENOSPC",
        libc::EDQUOT => "EDQUOT",
        libc::EIO => "EIO",
        libc::EROFS => "EROFS",
        libc::EFBIG => "EFBIG",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::ECONNABORTED => "ECONNABORTED",
        _ => return e.to_string(),
    };
    let text = io::Error::from_raw_os_error(code).to_string();
    // `No space left on device (os error 28)`: the name says the number already.
    let text = text.split(" (os error").next().unwrap_or(&text);
    format!("{name} ({text})")
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_the_errno() {
        let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(super::describe(&e), "ENOSPC (No space left on device)");
        let e = std::io::Error::other("plain");
        assert_eq!(super::describe(&e), "plain");
        let e = std::io::Error::new(std::io::ErrorKind::StorageFull, "glommio's words");
        assert_eq!(super::describe(&e), "ENOSPC (No space left on device)");
    }
}
