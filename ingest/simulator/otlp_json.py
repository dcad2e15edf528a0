"""OTLP/JSON and Prometheus text rendering, vectorised with polars string expressions.

OTLP JSON follows the protobuf JSON mapping of opentelemetry-proto: lowerCamelCase keys, 64-bit integers
(timestamps, counts, ``asInt``, ``intValue``) as decimal strings, hex trace and span ids, enum values as numbers.
Only ids, numbers and fixed vocabulary are spliced into the templates, so no JSON escaping is needed there;
free text (resource attributes, metric descriptions) goes through orjson.
"""

from __future__ import annotations

import orjson
import polars as pl

SCOPE = {"name": "rootwise.simulator", "version": "1.0.0"}
MAX_FILE_BYTES = 50 * 1024 * 1024

L = pl.lit


def kv_str(key: str, expr: pl.Expr) -> pl.Expr:
    return pl.concat_str([L(f'{{"key":"{key}","value":{{"stringValue":"'), expr, L('"}}')])


def kv_int(key: str, expr: pl.Expr) -> pl.Expr:
    return pl.concat_str(
        [L(f'{{"key":"{key}","value":{{"intValue":"'), expr.cast(pl.Int64).cast(pl.Utf8), L('"}}')]
    )


def kv_double(key: str, expr: pl.Expr) -> pl.Expr:
    return pl.concat_str(
        [L(f'{{"key":"{key}","value":{{"doubleValue":'), expr.cast(pl.Float64).cast(pl.Utf8), L("}}")]
    )


def kv_bool(key: str, expr: pl.Expr) -> pl.Expr:
    return pl.concat_str(
        [
            L(f'{{"key":"{key}","value":{{"boolValue":'),
            pl.when(expr).then(L("true")).otherwise(L("false")),
            L("}}"),
        ]
    )


def attributes_json(attrs: dict[str, str | int | float | bool]) -> str:
    """A static attribute list (``[{"key": ..., "value": {...}}]``) as JSON text."""
    out = []
    for k, v in attrs.items():
        val: dict[str, str | float | bool]
        if isinstance(v, bool):
            val = {"boolValue": v}
        elif isinstance(v, int):
            val = {"intValue": str(v)}
        elif isinstance(v, float):
            val = {"doubleValue": v}
        else:
            val = {"stringValue": str(v)}
        out.append({"key": k, "value": val})
    return orjson.dumps(out).decode()


def ns(expr: pl.Expr) -> pl.Expr:
    return expr.cast(pl.Int64).cast(pl.Utf8)


def join_groups(frame: pl.DataFrame, keys: list[str], column: str, out: str) -> pl.DataFrame:
    """Concatenate ``column`` with commas per group, groups and rows in their current order."""
    return frame.group_by(keys, maintain_order=True).agg(pl.col(column).str.join(",").alias(out))


def pack(blocks: list[str], head: str, tail: str, limit: int = MAX_FILE_BYTES) -> list[bytes]:
    """Files of at most ``limit`` bytes, each ``head`` + comma-joined blocks + ``tail`` (one block may exceed)."""
    files: list[bytes] = []
    cur: list[str] = []
    size = len(head) + len(tail)
    for b in blocks:
        if cur and size + len(b) + 1 > limit:
            files.append((head + ",".join(cur) + tail).encode())
            cur, size = [], len(head) + len(tail)
        cur.append(b)
        size += len(b) + 1
    if cur:
        files.append((head + ",".join(cur) + tail).encode())
    return files


def resource_blocks(
    frame: pl.DataFrame, resources: pl.DataFrame, item_col: str, scope_key: str, items_key: str
) -> list[str]:
    """``{"resource": ..., "scopeX": [{"scope": ..., "items": [...]}]}`` per resource, items joined in order.

    ``frame`` has ``res`` (resource key) and ``item_col`` (rendered JSON); ``resources`` maps ``res`` to
    ``resource`` (rendered JSON of the resource).
    """
    if frame.height == 0:
        return []
    grouped = join_groups(frame, ["res"], item_col, "items").sort("res")
    grouped = grouped.join(resources, on="res", how="left", maintain_order="left")
    scope = orjson.dumps(SCOPE).decode()
    blocks = grouped.select(
        pl.concat_str(
            [
                L('{"resource":'),
                pl.col("resource"),
                L(f',"{scope_key}":[{{"scope":{scope},"{items_key}":['),
                pl.col("items"),
                L("]}]}"),
            ]
        ).alias("b")
    )
    return blocks["b"].to_list()
