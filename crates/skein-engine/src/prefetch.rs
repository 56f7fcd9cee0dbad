//! Prefetch hints for the walks over a head's spans when it is cut into a block, the one
//! `unsafe` of the engine.
//!
//! Why: a head's spans were written seconds before it is cut — its span structs, their
//! attribute arrays and the heap strings of long values are spread over the heap and no longer
//! in the CPU's caches. The chunk encoder's first pass over them (string slots, value uses,
//! postings) and the head's drop stall on those loads one after another: measured by thread
//! CPU time, pinned to one core, 2M realistic spans, that pass took more time than decoding
//! the OTLP requests that brought the spans in. Asking for the lines of a span a few places
//! ahead lets the loads overlap with the work on the spans before it.
//!
//! The x86-64 prefetch intrinsic is an `unsafe fn` (it needs the `sse` target feature, which
//! every x86-64 CPU has). It is sound for any address: a prefetch is a hint that never faults,
//! never reads into the program and changes nothing it can observe, so the pointers given
//! here need not even be valid. On other architectures these functions do nothing.
#![allow(unsafe_code)]

use skein_model::{AttrValue, Span};

/// Asks for the cache line holding `p`.
#[inline(always)]
fn line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: see the module's doc — a prefetch of any address is sound; x86-64 has SSE.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks for every line that holds one of the `bytes` bytes at `p` (from the line `p` is in:
/// an object that does not start a line reaches into one more).
#[inline(always)]
fn lines(p: *const u8, bytes: usize) {
    let first = p.wrapping_sub(p.addr() % 64);
    for at in (0..bytes + p.addr() % 64).step_by(64) {
        line(first.wrapping_add(at));
    }
}

/// Asks for the span's own struct.
#[inline(always)]
pub(crate) fn span(s: &Span) {
    lines(std::ptr::from_ref(s).cast(), std::mem::size_of::<Span>());
}

/// Asks for the span's attribute array (which reads the span's struct: ask for that first).
#[inline(always)]
pub(crate) fn attributes(s: &Span) {
    lines(s.attributes.as_ptr().cast(), std::mem::size_of_val(&s.attributes[..]));
}

/// Asks for the first line of each long string value among the span's attributes (which reads
/// its attribute array: ask for that first).
#[inline(always)]
pub(crate) fn strings(s: &Span) {
    for kv in &s.attributes {
        if let AttrValue::Str(v) = &kv.value
            && v.is_heap_allocated()
        {
            line(v.as_ptr());
        }
    }
}
