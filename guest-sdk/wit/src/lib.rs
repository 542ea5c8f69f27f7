//! The contract between the Flint host and a job component: the WIT world in
//! `flint.wit` beside this crate, and the interface version, read from that file's
//! `package flint:job@0.N.0;` line at compile time.
//!
//! Neighbours: the guest SDK (`flint`) generates the guest's bindings from
//! [`WIT_FILE`] and reports [`INTERFACE_VERSION`] from the component; the sandbox
//! (`flint-sandbox`) generates the host's bindings from the same file and refuses a
//! component that reports another version. Neither keeps a number of its own: changing
//! the world means bumping the package version here, once.

/// Path of the world's source, relative to this crate (`guest-sdk/wit/flint.wit`).
pub const WIT_FILE: &str = "flint.wit";

/// The world's source text.
pub const WIT_SOURCE: &str = include_str!("../flint.wit");

/// The WIT package, without its version.
pub const PACKAGE: &str = "flint:job";

/// The package's semver, as export names carry it (`flint:job/job@0.6.0`).
pub const SEMVER: &str = semver(WIT_SOURCE);

/// The interface version: the package's minor version. A component reports it from
/// `job.interface-version`; a host that speaks another refuses the component.
pub const INTERFACE_VERSION: u32 = minor(SEMVER);

const PACKAGE_LINE: &str = "package flint:job@";

/// The `X.Y.Z` of the `package flint:job@X.Y.Z;` line.
const fn semver(wit: &str) -> &str {
    let text = wit.as_bytes();
    let prefix = PACKAGE_LINE.as_bytes();
    let mut i = 0;
    while i + prefix.len() <= text.len() {
        let mut j = 0;
        while j < prefix.len() && text[i + j] == prefix[j] {
            j += 1;
        }
        if j == prefix.len() {
            let start = i + j;
            let mut end = start;
            while end < text.len() && text[end] != b';' {
                end += 1;
            }
            let (_, rest) = wit.split_at(start);
            let (version, _) = rest.split_at(end - start);
            return version;
        }
        i += 1;
    }
    panic!("flint.wit has no `package flint:job@X.Y.Z;` line")
}

/// `Y` of `X.Y.Z`.
const fn minor(semver: &str) -> u32 {
    let v = semver.as_bytes();
    let mut i = 0;
    while i < v.len() && v[i] != b'.' {
        i += 1;
    }
    i += 1;
    let mut n = 0u32;
    let mut digits = 0;
    while i < v.len() && v[i].is_ascii_digit() {
        n = n * 10 + (v[i] - b'0') as u32;
        i += 1;
        digits += 1;
    }
    assert!(
        digits > 0,
        "the package version of flint.wit has no minor number"
    );
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_the_package_line() {
        assert_eq!(semver("// x\npackage flint:job@0.12.3;\n"), "0.12.3");
        assert_eq!(minor("0.12.3"), 12);
        assert!(WIT_SOURCE.contains(&format!("package {PACKAGE}@{SEMVER};")));
        assert_eq!(INTERFACE_VERSION, minor(SEMVER));
    }
}
