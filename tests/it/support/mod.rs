pub mod app;
pub mod cycles;
pub mod monime;
pub mod process;
pub mod worker;

/// Raises this process's open-file limit to its hard limit (many concurrent connections).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
