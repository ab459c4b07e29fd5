"""`llmrec data ...`: dataset download, import and inspection."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from llmrec.data import DataError, resolve_dataset


def fail(err: Exception) -> typer.Exit:
    """Bad input ends the command with its message (file, row, field) on stderr and exit code 2."""
    print(f"error: {err}", file=sys.stderr)
    return typer.Exit(code=2)


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Download, import and inspect datasets.", no_args_is_help=True)

    @data_app.command("info")
    def info(dataset: str = typer.Option("ml-100k", help="Built-in name (ml-100k, ml-1m, ml-latest-small, ml-20m, "
                                              "ml-25m, amazon-2018-<category>) or a dataset folder.")) -> None:
        """Print a dataset's counts and load report as JSON."""
        try:
            print(json.dumps(resolve_dataset(dataset).summary()))
        except DataError as e:
            raise fail(e) from None

    @data_app.command("import")
    def import_cmd(
        events: Path = typer.Option(..., help="Events table: CSV (.tsv = tab-separated), JSON lines "
                                    "(.json/.jsonl/.ndjson, optionally .gz) or Parquet."),
        items: Path = typer.Option(..., help="Items table: CSV, JSON lines or Parquet (item_id, title; optional "
                                   "genres, year, text, brand)."),
        users: Path = typer.Option(None, help="Optional users table; columns besides user_id become the profile."),
        map: str = typer.Option("", "--map", help="Column mapping CANONICAL=COLUMN,... e.g. "
                                "user_id=uid,item_id=movie,timestamp=ts,value=rating,brand=publisher; "
                                "prefix items./events./users. "
                                "for one table only (items.item_id=movie_id)."),
        out: Path = typer.Option(..., help="Dataset folder to write (events/items/users.parquet, dataset.json)."),
        strict: bool = typer.Option(False, "--strict", help="Fail at the first bad row instead of skipping it."),
        encoding: str = typer.Option("utf-8", help="Text encoding of CSV files, e.g. latin-1 or cp1252."),
        genre_sep: str = typer.Option("|", help="Separator of the multi-valued genres/category field in text "
                                      "files (JSON lists need none), e.g. '|' or ','."),
        year_from_title: bool = typer.Option(None, "--year-from-title/--no-year-from-title",
                                             help="Take the year from titles like 'Toy Story (1995)' and strip it. "
                                                  "Default: automatic when no year column is mapped and most "
                                                  "titles end in a (yyyy) year."),
        name: str = typer.Option(None, help="Dataset name (default: the events file's stem)."),
        value_meaning: str = typer.Option(None, help="What the events' value column means, required when it "
                                          "has one: 'rating' (a star rating, thresholded into liked/watched/"
                                          "disliked), 'count' (plays, visits: a strength, never a dislike) or "
                                          "'none' (ignored)."),
        behavior_column: str = typer.Option(None, help="Column holding each event's behaviour type (click, view, "
                                            "play, favorite, cart, purchase, search, ...); same as --map "
                                            "behavior=COL."),
        behavior: str = typer.Option(None, help="One behaviour type for every event, for single-type logs "
                                     "(e.g. play)."),
        behavior_type: str = typer.Option("", help="Declare types beyond the common ones: NAME=POLARITY[:WEIGHT],"
                                          "... with POLARITY positive, neutral, negative or search, WEIGHT the "
                                          "narrative weight (e.g. wishlist=positive:2,skip=negative)."),
    ) -> None:
        """Import your own logs into a dataset folder; print its summary and load report as JSON.

        Behaviour types: the common names (click, view, play, favorite, cart, purchase, search; Taobao's pv,
        fav, buy; liked/watched/disliked) are known; any other name must be declared with --behavior-type.
        Search events have a query (--map query=COL) and an empty item id.
        """
        from llmrec.data.behaviors import EventMeaning, parse_behavior_types
        from llmrec.data.ingest import import_tables, parse_mapping

        try:
            mapping = parse_mapping(map)
            if behavior_column:
                mapping["behavior"] = behavior_column
            if value_meaning not in (None, "rating", "count", "none"):
                raise ValueError(f"--value-meaning must be rating, count or none, got {value_meaning!r}")
            how = EventMeaning(value_meaning=value_meaning, behavior=behavior,
                               declared=parse_behavior_types(behavior_type))
            ds = import_tables(events, items, users, mapping, strict=strict, encoding=encoding,
                               genre_sep=genre_sep, name=name, year_from_title=year_from_title, how=how)
        except (DataError, ValueError) as e:
            raise fail(e) from None
        ds.save(out)
        print(json.dumps({"out": str(out), **ds.summary()}))

    @data_app.command("download")
    def download(
        dataset: str = typer.Argument(..., help="Dataset to fetch: ml-100k, ml-1m, ml-latest-small, ml-20m, ml-25m "
                                      "or amazon-2018-<category> (e.g. amazon-2018-magazine-subscriptions)."),
        dest: Path = typer.Option(None, help="Target folder (default: $LLMREC_HOME/datasets/<name>, where "
                                  "`--dataset <name>` looks when no environment variable points elsewhere)."),
        url: str = typer.Option(None, help="Mirror URL(s) of the file(s), comma-separated, one per file."),
        md5: str = typer.Option(None, help="Expected MD5(s), comma-separated, one per file (default: the pinned "
                                "ones; required where none is pinned, e.g. ml-latest-small)."),
        force: bool = typer.Option(False, "--force", help="Download again even if a complete copy exists."),
    ) -> None:
        """Fetch a public dataset, verify its checksum and unpack it; print the folder."""
        from llmrec.data.download import download_dataset

        def split(value: str | None) -> tuple[str, ...] | None:
            return tuple(v.strip() for v in value.split(",")) if value else None

        try:
            print(download_dataset(dataset, dest, urls=split(url), md5s=split(md5), force=force))
        except DataError as e:
            raise fail(e) from None

    app.add_typer(data_app, name="data")
