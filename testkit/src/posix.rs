//! POSIX checks that pjdfstest makes only by chance, made deterministic so that
//! `cargo test` holds them for every example filesystem.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// Checks, in directory `dir` of a mount, that the executable of a running program
/// can be neither opened for writing nor truncated by `open(O_TRUNC)`: each open
/// fails with `ETXTBSY`, and the file and the program are left intact. Once the
/// program has exited, `open(O_RDONLY | O_TRUNC)` truncates.
///
/// A filesystem that agrees `ATOMIC_O_TRUNC` fails this every time: the kernel
/// then lets `OPEN` truncate before it checks for a running program
/// (`handle_truncate` in `fs/namei.c` runs after `->open`), so
/// `open(O_RDONLY | O_TRUNC)` empties the file, reports `ETXTBSY` anyway, and the
/// program dies of its next page fault (pjdfstest's `open::etxtbsy` failed about
/// one run in fifty, when the program died before the check).
///
/// Panics, naming what went wrong.
pub fn running_program_is_not_truncated(dir: &Path) {
    let program = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("no sleep(1) in /usr/bin or /bin");
    let original = fs::read(program).expect("read sleep(1)");
    let exe = dir.join("running-program");
    fs::write(&exe, &original).expect("write the program into the mount");
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).expect("chmod 755");
    let mut child = Command::new(&exe)
        .arg("60")
        .spawn()
        .expect("run the program from the mount");
    let attempts: [(&str, &dyn Fn() -> std::io::Result<File>); 3] = [
        ("O_WRONLY", &|| OpenOptions::new().write(true).open(&exe)),
        ("O_RDWR", &|| {
            OpenOptions::new().read(true).write(true).open(&exe)
        }),
        ("O_RDONLY | O_TRUNC", &|| {
            OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_TRUNC)
                .open(&exe)
        }),
    ];
    let mut wrong = Vec::new();
    for (what, open) in attempts {
        match open() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => {}
            other => wrong.push(format!("open({what}) of the running program: {other:?}")),
        }
    }
    let alive = matches!(child.try_wait(), Ok(None));
    let now = fs::read(&exe).expect("read the program back");
    let _ = child.kill();
    let _ = child.wait();
    assert!(wrong.is_empty(), "expected ETXTBSY: {}", wrong.join("; "));
    assert!(
        now == original,
        "the running program's file changed: {} bytes, was {}",
        now.len(),
        original.len()
    );
    assert!(alive, "the running program died");
    // Exited: the same open truncates now.
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_TRUNC)
        .open(&exe)
        .expect("open(O_RDONLY | O_TRUNC) after the program exited");
    assert_eq!(f.metadata().expect("fstat").len(), 0);
    assert_eq!(fs::metadata(&exe).expect("stat").len(), 0);
    fs::remove_file(&exe).expect("unlink the program");
}
