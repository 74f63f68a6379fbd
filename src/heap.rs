//! How the agent's heap gives memory back to the kernel.
//!
//! A full sync over every lease (the start-up, a resync after a lost watch, the periodic repair)
//! builds the whole desired kernel state and its plan, then frees them. glibc's allocator keeps
//! freed memory for reuse, so without this an agent on 10,000 leases would stay at the size of
//! that peak for the rest of its life. Both calls are no-ops where the allocator is not glibc's.

/// Large buffers (a plan of 40,000 operations is over a megabyte) are mapped on their own and
/// unmapped when freed. glibc would otherwise raise this threshold to the size of the first such
/// buffer freed, and later ones would land in the heap and leave holes behind.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Called once, before anything is allocated in earnest.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it has no preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns the allocator's free pages to the kernel, after a full sync.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
