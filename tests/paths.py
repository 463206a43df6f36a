"""Where the tests' fixed inputs live, whatever folder a test module sits in."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"  # real LUNA16 tables and headers, LIDC extract, frozen stores (see data/README.md)
REPO = TESTS.parent
