// Process-wide heap settings for training. A training step allocates and frees the same large
// activation and gradient buffers every step; glibc's defaults hand blocks above 128 KiB..32 MiB back to
// the kernel with munmap/trim, so every step pays page faults to get them again (measured: 7% of a
// `small` step). Keeping freed memory in the heap makes the second step onwards fault-free; the peak
// resident size is unchanged (it is the peak), memory is simply not returned until the process ends.
#pragma once

namespace modalign {

// mallopt(M_MMAP_THRESHOLD = 1 GiB, M_TRIM_THRESHOLD = 1 GiB, M_TOP_PAD = 64 MiB); a no-op where the C library is not glibc.
// Returns whether the settings took effect.
bool keep_freed_memory();

}  // namespace modalign
