"""A training job: setup, the step, the loop and its hooks, optimizer and schedule, losses, mixing, resume, preemption, Hub sync."""
