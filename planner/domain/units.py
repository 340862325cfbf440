"""Units: moeplan keeps every quantity in base units (bytes, seconds, FLOP/s, bytes/s, watts, joules).

Files and messages use the units people write (GB, Mbit/s, ms, TFLOP/s); these factors convert
them, each defined once. Memory and bandwidth are decimal, as datasheets count them (1 GB = 1e9 bytes).
"""

GB = 1e9                    # bytes per gigabyte
GB_PER_S = 1e9              # bytes/s per GB/s
MBPS = 1e6 / 8.0            # bytes/s per Mbit/s
GBPS = 1e9 / 8.0            # bytes/s per Gbit/s
TFLOPS = 1e12               # FLOP/s per TFLOP/s
MS = 1e-3                   # seconds per millisecond
