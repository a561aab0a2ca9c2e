"""Commands that measure the job; run by hand, never as timed tests."""
