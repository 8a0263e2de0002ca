"""SD 1.x/2.x model families (and the tiny demo model) for adapt."""
