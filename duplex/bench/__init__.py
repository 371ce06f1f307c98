"""`duplex bench`: duplex vs cascade latency over the real protocol (`latency` measures, `command` runs and reports)."""
