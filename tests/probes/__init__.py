"""Uprobes: pure planners and parsers (unit) and the real tracers in a simulated pod."""
