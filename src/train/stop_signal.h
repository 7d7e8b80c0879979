// How SIGINT and SIGTERM stop a training run.
// - While a run has written nothing yet (loading the model and the data), exit_on_stop_signals()
//   makes them end the process at once with a message and the shell's code 128 + signal.
// - Inside a StopSignalScope (training steps, checkpoint and final saves) they are only recorded:
//   the run finishes the step or the save in progress, saves, and returns as interrupted.
#pragma once

namespace moeforge {

void exit_on_stop_signals();

class StopSignalScope {
 public:
  StopSignalScope();   // the outermost scope clears an earlier run's recorded signal
  ~StopSignalScope();  // restores the handlers in place before it
  StopSignalScope(const StopSignalScope&) = delete;
  StopSignalScope& operator=(const StopSignalScope&) = delete;

  // The signal received inside the scope, or 0.
  static int received();

 private:
  void (*previous_int_)(int);
  void (*previous_term_)(int);
};

}  // namespace moeforge
