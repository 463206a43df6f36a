"""What LUNA16 gives us: its tables, its .mhd scans, their geometry, and the LIDC readers ' contours."""
