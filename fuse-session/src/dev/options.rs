//! Mount options and their two renderings: for `mount(2)` and for `fusermount3 -o`.
use super::error::OptionError;
use nix::mount::MsFlags;

/// Options that the library computes itself and that a raw option may therefore not set,
/// plus the ones with a typed setter.
const RESERVED: &[&str] = &[
    "fd",
    "rootmode",
    "user_id",
    "group_id",
    "fsname",
    "subtype",
    "allow_other",
    "allow_root",
    "default_permissions",
    "max_read",
    "auto_unmount",
    "ro",
    // Mount flags, not kernel options: set with `MountOptions::atime`.
    "relatime",
    "noatime",
    "strictatime",
    // Mount flags with setters `suid`, `dev`, `exec`.
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
];

/// The options the kernel's FUSE parser knows (Linux `fs/fuse/inode.c`,
/// `fuse_fs_parameters`); `blksize` only for `fuseblk`, which this library does not
/// mount. `mount(2)` refuses any other with `EINVAL`.
const KERNEL_KNOWS: &[&str] = &[
    "fd",
    "rootmode",
    "user_id",
    "group_id",
    "default_permissions",
    "allow_other",
    "max_read",
    "source",
    "subtype",
];

/// How a mount updates access times: the per-mount flags `relatime` (the kernel's
/// default), `noatime` and `strictatime`. FUSE leaves atime to the filesystem, so a
/// daemon that keeps atime should follow its mount's mode (see
/// [`MountIdentity::access_times`](super::MountIdentity::access_times)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Atime {
    /// Update on access when the atime is not after the mtime or ctime, or is a day
    /// old (`relatime`, `MS_RELATIME`).
    #[default]
    Relatime,
    /// Never update on access (`noatime`, `MS_NOATIME`).
    NoAtime,
    /// Update on every access (`strictatime`, `MS_STRICTATIME`).
    StrictAtime,
}

impl Atime {
    /// The option name (`relatime`, `noatime`, `strictatime`).
    pub fn name(self) -> &'static str {
        match self {
            Atime::Relatime => "relatime",
            Atime::NoAtime => "noatime",
            Atime::StrictAtime => "strictatime",
        }
    }
}

/// What to mount and how: a builder of FUSE mount options.
///
/// Each setter takes and returns the builder by value:
///
/// ```
/// use fuse_session::dev::MountOptions;
/// let opts = MountOptions::new().fsname("demo").subtype("memfs").default_permissions(true);
/// assert_eq!(opts.fusermount_options().unwrap(), "fsname=demo,subtype=memfs,default_permissions");
/// ```
///
/// `rootmode`, `user_id`, `group_id` and `fd` are computed when mounting (from the
/// mountpoint, the caller's effective ids and the opened device). Values are checked
/// when rendered: a `,` or NUL in any value is an [`OptionError`], never passed on.
///
/// # Kernel behaviour
/// - `default_permissions`: the kernel checks file modes against the caller itself;
///   without it, the filesystem must check access.
/// - `allow_other`: users other than the mounter may access the mount (`fusermount3`
///   permits it to non-root users only with `user_allow_other` in `/etc/fuse.conf`).
/// - `allow_root`: not a kernel option. It is passed to the kernel as `allow_other`,
///   and **the session must then refuse requests whose uid is neither the mounter's
///   nor 0** (see [`MountOptions::is_allow_root`]).
/// - `max_read`: caps the size of READ requests.
/// - `auto_unmount`: only through `fusermount3`, which stays running and unmounts when
///   the mounting process's socket closes (that is, when every copy of it is closed).
/// - `suid`, `dev`, `exec`: mount flags. Unless enabled, the mount is `nosuid` and
///   `nodev` (as `fusermount3` makes every user's mount); `exec` is on unless turned
///   off. `fusermount3` honours `suid` and `dev` only for root.
///
/// # References
/// - Linux `fs/fuse/inode.c` (`fuse_fs_parameters`), `fuse(4)`, `fusermount3(1)`,
///   `mount.fuse3(8)` (the option list)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    fsname: Option<String>,
    subtype: Option<String>,
    allow_other: bool,
    allow_root: bool,
    default_permissions: bool,
    read_only: bool,
    max_read: Option<u32>,
    auto_unmount: bool,
    atime: Option<Atime>,
    suid: bool,
    dev: bool,
    noexec: bool,
    extra: Vec<String>,
}

impl MountOptions {
    /// No options: a read-write mount only the mounter can access, with the
    /// filesystem checking permissions.
    pub fn new() -> Self {
        Self::default()
    }

    /// The source shown in `/proc/self/mountinfo` and `mount(8)` (default `fuse`).
    pub fn fsname(mut self, fsname: impl Into<String>) -> Self {
        self.fsname = Some(fsname.into());
        self
    }

    /// The filesystem subtype: the mount's type becomes `fuse.SUBTYPE`.
    pub fn subtype(mut self, subtype: impl Into<String>) -> Self {
        self.subtype = Some(subtype.into());
        self
    }

    /// Let all users access the mount (kernel option `allow_other`).
    pub fn allow_other(mut self, on: bool) -> Self {
        self.allow_other = on;
        self
    }

    /// Let the mounter and root access the mount. Rendered as `allow_other`; the session
    /// must filter requests by uid (see [`MountOptions::is_allow_root`]).
    pub fn allow_root(mut self, on: bool) -> Self {
        self.allow_root = on;
        self
    }

    /// Let the kernel check permissions from file modes (`default_permissions`).
    pub fn default_permissions(mut self, on: bool) -> Self {
        self.default_permissions = on;
        self
    }

    /// Mount read-only (`MS_RDONLY`, `ro`).
    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }

    /// The access-time mode of the mount (a `mount(2)` flag; for `fusermount3`, the
    /// option of that name). Unset: the kernel's default, `relatime`.
    pub fn atime(mut self, mode: Atime) -> Self {
        self.atime = Some(mode);
        self
    }

    /// Honour set-user-ID and set-group-ID bits (`suid`; default off: `MS_NOSUID`).
    pub fn suid(mut self, on: bool) -> Self {
        self.suid = on;
        self
    }

    /// Allow device files (`dev`; default off: `MS_NODEV`).
    pub fn dev(mut self, on: bool) -> Self {
        self.dev = on;
        self
    }

    /// Allow executing files (`exec`, the default; off: `noexec`, `MS_NOEXEC`).
    pub fn exec(mut self, on: bool) -> Self {
        self.noexec = !on;
        self
    }

    /// The access-time mode requested, if any.
    pub fn get_atime(&self) -> Option<Atime> {
        self.atime
    }

    /// Cap READ requests at `bytes` (`max_read=`).
    pub fn max_read(mut self, bytes: u32) -> Self {
        self.max_read = Some(bytes);
        self
    }

    /// Unmount automatically when the mounting process dies. Forces mounting through
    /// `fusermount3`, which stays running to watch the process (see [`super::Mount`]).
    pub fn auto_unmount(mut self, on: bool) -> Self {
        self.auto_unmount = on;
        self
    }

    /// Add a raw option (`name` or `name=value`), passed on as is. Options that the
    /// library computes or has a setter for are refused when rendering.
    pub fn option(mut self, raw: impl Into<String>) -> Self {
        self.extra.push(raw.into());
        self
    }

    /// The fsname, if set.
    pub fn get_fsname(&self) -> Option<&str> {
        self.fsname.as_deref()
    }

    /// The subtype, if set.
    pub fn get_subtype(&self) -> Option<&str> {
        self.subtype.as_deref()
    }

    /// True if `allow_root` was requested: the kernel lets everyone in (`allow_other`),
    /// and the session must answer requests from uids other than the mounter's and 0
    /// with `EACCES`.
    pub fn is_allow_root(&self) -> bool {
        self.allow_root
    }

    /// True if `auto_unmount` was requested.
    pub fn is_auto_unmount(&self) -> bool {
        self.auto_unmount
    }

    /// True if read-only was requested.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The mount source for `mount(2)`: the fsname, else the subtype, else `fuse`.
    pub fn source(&self) -> Result<&str, OptionError> {
        self.validate()?;
        Ok(self
            .fsname
            .as_deref()
            .or(self.subtype.as_deref())
            .unwrap_or("fuse"))
    }

    /// The filesystem type for `mount(2)`: `fuse` or `fuse.SUBTYPE`.
    pub fn fstype(&self) -> Result<String, OptionError> {
        self.validate()?;
        Ok(match &self.subtype {
            Some(s) => format!("fuse.{s}"),
            None => "fuse".to_owned(),
        })
    }

    /// The `mount(2)` flags: `MS_NOSUID` and `MS_NODEV` unless [`MountOptions::suid`]
    /// and [`MountOptions::dev`] (as `fusermount3` does for users), `MS_NOEXEC` with
    /// `exec(false)`, `MS_RDONLY` when read-only and the [`Atime`] flag if one was set.
    pub fn mount_flags(&self) -> MsFlags {
        let mut flags = MsFlags::empty();
        if !self.suid {
            flags |= MsFlags::MS_NOSUID;
        }
        if !self.dev {
            flags |= MsFlags::MS_NODEV;
        }
        if self.noexec {
            flags |= MsFlags::MS_NOEXEC;
        }
        if self.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        match self.atime {
            Some(Atime::Relatime) => flags |= MsFlags::MS_RELATIME,
            Some(Atime::NoAtime) => flags |= MsFlags::MS_NOATIME,
            Some(Atime::StrictAtime) => flags |= MsFlags::MS_STRICTATIME,
            None => {}
        }
        flags
    }

    /// The option string for `mount(2)`'s data argument:
    /// `fd=N,rootmode=O,user_id=U,group_id=G` then the requested kernel options.
    /// `rootmode` is rendered in octal, as the kernel parses it. fsname and subtype are
    /// not in it (they travel as the source and type); neither is `ro` (a flag).
    ///
    /// # Errors
    /// [`OptionError`] if a value contains `,` or NUL, a raw option is reserved, or
    /// `allow_other` and `allow_root` are both set.
    pub fn kernel_options(
        &self,
        fd: i32,
        rootmode: u32,
        user_id: u32,
        group_id: u32,
    ) -> Result<String, OptionError> {
        self.validate()?;
        let mut out =
            format!("fd={fd},rootmode={rootmode:o},user_id={user_id},group_id={group_id}");
        for opt in self.common_options() {
            out.push(',');
            out.push_str(&opt);
        }
        Ok(out)
    }

    /// The string for `fusermount3 -o`: fsname, subtype, the kernel options, `ro`,
    /// `auto_unmount`. `fusermount3` computes `fd`, `rootmode`, `user_id` and
    /// `group_id` itself.
    ///
    /// # Errors
    /// As [`MountOptions::kernel_options`].
    pub fn fusermount_options(&self) -> Result<String, OptionError> {
        self.validate()?;
        let mut opts = Vec::new();
        if let Some(n) = &self.fsname {
            opts.push(format!("fsname={n}"));
        }
        if let Some(s) = &self.subtype {
            opts.push(format!("subtype={s}"));
        }
        if self.read_only {
            opts.push("ro".to_owned());
        }
        if self.auto_unmount {
            opts.push("auto_unmount".to_owned());
        }
        if let Some(a) = self.atime {
            opts.push(a.name().to_owned());
        }
        if self.suid {
            opts.push("suid".to_owned());
        }
        if self.dev {
            opts.push("dev".to_owned());
        }
        if self.noexec {
            opts.push("noexec".to_owned());
        }
        opts.extend(self.common_options());
        Ok(opts.join(","))
    }

    /// Options that both renderings share.
    fn common_options(&self) -> Vec<String> {
        let mut opts = Vec::new();
        if self.default_permissions {
            opts.push("default_permissions".to_owned());
        }
        if self.allow_other || self.allow_root {
            opts.push("allow_other".to_owned());
        }
        if let Some(n) = self.max_read {
            opts.push(format!("max_read={n}"));
        }
        opts.extend(self.extra.iter().cloned());
        opts
    }

    /// Check every value.
    /// The raw options ([`MountOptions::option`]) the kernel's FUSE parser does not
    /// know: the likely cause when `mount(2)` answers `EINVAL`.
    pub fn likely_rejected(&self) -> Vec<String> {
        self.extra
            .iter()
            .filter(|raw| {
                let name = raw.split('=').next().unwrap_or(raw);
                !KERNEL_KNOWS.contains(&name)
            })
            .cloned()
            .collect()
    }

    fn validate(&self) -> Result<(), OptionError> {
        if self.allow_other && self.allow_root {
            return Err(OptionError::AllowOtherAndAllowRoot);
        }
        if let Some(n) = &self.fsname {
            check_value("fsname", n)?;
        }
        if let Some(s) = &self.subtype {
            check_value("subtype", s)?;
        }
        for raw in &self.extra {
            check_value(raw, raw)?;
            let name = raw.split('=').next().unwrap_or(raw);
            if RESERVED.contains(&name) {
                return Err(OptionError::Reserved {
                    option: name.to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Refuse an empty value, a comma or a NUL.
fn check_value(option: &str, value: &str) -> Result<(), OptionError> {
    let option = option.to_owned();
    if value.is_empty() {
        Err(OptionError::Empty { option })
    } else if value.contains(',') {
        Err(OptionError::Comma { option })
    } else if value.contains('\0') {
        Err(OptionError::Nul { option })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suid_dev_exec_are_mount_flags() {
        let o = MountOptions::new();
        assert_eq!(o.mount_flags(), MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        let o = MountOptions::new().suid(true).dev(true).exec(false);
        assert_eq!(o.mount_flags(), MsFlags::MS_NOEXEC);
        assert_eq!(o.fusermount_options().unwrap(), "suid,dev,noexec");
        for raw in ["suid", "nodev", "noexec", "exec"] {
            assert!(matches!(
                MountOptions::new().option(raw).fusermount_options(),
                Err(OptionError::Reserved { .. })
            ));
        }
    }

    #[test]
    fn unknown_raw_options_are_the_likely_rejected() {
        let o = MountOptions::new()
            .option("max_read=4096")
            .option("bogus=1")
            .option("blksize=512");
        assert_eq!(o.likely_rejected(), vec!["bogus=1", "blksize=512"]);
    }

    #[test]
    fn kernel_string_has_computed_options_first() {
        let o = MountOptions::new()
            .fsname("src")
            .subtype("t")
            .default_permissions(true)
            .allow_other(true)
            .max_read(65536)
            .option("noatime_is_not_fuse=1");
        assert_eq!(
            o.kernel_options(5, 0o40000, 1000, 100).unwrap(),
            "fd=5,rootmode=40000,user_id=1000,group_id=100,default_permissions,allow_other,\
             max_read=65536,noatime_is_not_fuse=1"
        );
        assert_eq!(o.source().unwrap(), "src");
        assert_eq!(o.fstype().unwrap(), "fuse.t");
    }

    #[test]
    fn fusermount_string() {
        let o = MountOptions::new()
            .fsname("src")
            .read_only(true)
            .auto_unmount(true)
            .allow_root(true);
        assert_eq!(
            o.fusermount_options().unwrap(),
            "fsname=src,ro,auto_unmount,allow_other"
        );
        assert!(o.mount_flags().contains(MsFlags::MS_RDONLY));
        let n = MountOptions::new().atime(Atime::NoAtime);
        assert_eq!(n.fusermount_options().unwrap(), "noatime");
        assert!(n.mount_flags().contains(MsFlags::MS_NOATIME));
        assert!(!n
            .kernel_options(3, 0o40000, 0, 0)
            .unwrap()
            .contains("atime"));
        let e = MountOptions::new().option("noatime").fusermount_options();
        assert!(matches!(e, Err(OptionError::Reserved { .. })));
        assert_eq!(MountOptions::new().fusermount_options().unwrap(), "");
        assert_eq!(MountOptions::new().source().unwrap(), "fuse");
    }

    #[test]
    fn injection_is_refused() {
        let e = MountOptions::new()
            .fsname("a,allow_other")
            .fusermount_options();
        assert_eq!(
            e,
            Err(OptionError::Comma {
                option: "fsname".into()
            })
        );
        let e = MountOptions::new()
            .subtype("a\0b")
            .kernel_options(3, 0o40000, 0, 0);
        assert_eq!(
            e,
            Err(OptionError::Nul {
                option: "subtype".into()
            })
        );
        let e = MountOptions::new().option("x,fd=3").fusermount_options();
        assert!(matches!(e, Err(OptionError::Comma { .. })));
        let e = MountOptions::new().option("fd=3").fusermount_options();
        assert!(matches!(e, Err(OptionError::Reserved { .. })));
        let e = MountOptions::new().option("").fusermount_options();
        assert!(matches!(e, Err(OptionError::Empty { .. })));
        let e = MountOptions::new()
            .allow_other(true)
            .allow_root(true)
            .fusermount_options();
        assert_eq!(e, Err(OptionError::AllowOtherAndAllowRoot));
        assert!(e.unwrap_err().to_string().contains("choose one"));
    }
}
