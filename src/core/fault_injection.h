// Test-only fault injection for what a test cannot produce on demand: a kill at an exact point of a
// checkpoint write, a full disk, a signal mid-run. MOEFORGE_FAULT holds comma-separated requests
// "<fault>@<point>:<n>", each firing on the n-th pass (counted from 1 in this process) through the
// named point:
//   kill      SIGKILL, as a power cut or the OOM killer would
//   sigterm   SIGTERM (handled like a real one)
//   enospc    the write fails as on a full disk
//   hang      the process stops making progress (sleeps) without dying, as a stuck rank would
// Points: "file_write" (inside any file write, after half of the buffer), "save" (a checkpoint
// write: enospc at its start, kill between its model and optimizer files), "rename" (a checkpoint
// complete, before its rename), "metrics" (appending a metrics line, after half of it), "step"
// (after an optimizer step), "load" (a training session loading its data), "final_save" (before the
// trained model is saved). Unset, a pass costs one branch.
#pragma once

#include <string_view>

namespace moeforge {

enum class Fault { kNone, kKill, kSigterm, kNoSpace, kHang };

// Counts a pass through `point` and returns the fault MOEFORGE_FAULT asks for on this pass.
// Call it once per pass: every call counts.
Fault fault_at(std::string_view point);

// Raises SIGKILL or SIGTERM for those faults, sleeps for good for kHang; nothing for the others.
void raise_signal_fault(Fault fault);

}  // namespace moeforge
