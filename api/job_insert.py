"""Inserting thousands of job rows in one transaction, as fast as the database allows.

On PostgreSQL the rows stream through ``COPY … FROM STDIN``: one statement, no per-row
round trip or statement overhead (several times faster than a pipelined executemany).
Values go through each column type's own bind processing first, so what lands is
exactly what an ORM insert would have written. Elsewhere (SQLite) rows are inserted with
``executemany`` in chunks.
"""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from shared.models import Job

# Rows per executemany on databases without COPY.
INSERT_CHUNK = 2000


def insert_jobs(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (every column present, as :func:`api.submission.finish_job_row`
    makes them) into ``jobs`` inside ``session``'s transaction. Database errors are
    SQLAlchemy's ``DBAPIError`` subclasses (``IntegrityError`` for a unique violation)
    on every dialect."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        for start in range(0, len(rows), INSERT_CHUNK):
            session.execute(insert(Job), rows[start : start + INSERT_CHUNK])
        return
    dialect = connection.dialect
    columns = list(Job.__table__.columns)
    processors = [column.type.dialect_impl(dialect).bind_processor(dialect) for column in columns]
    names = ", ".join(f'"{column.name}"' for column in columns)
    driver = connection.connection.driver_connection
    assert driver is not None  # a live connection inside the transaction
    statement = f"COPY jobs ({names}) FROM STDIN"
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(
                    [
                        row[column.key] if process is None else process(row[column.key])
                        for column, process in zip(columns, processors, strict=True)
                    ]
                )
    except psycopg.Error as exc:
        # COPY runs on the driver, outside SQLAlchemy: wrap its errors as SQLAlchemy does
        # (a unique violation becomes IntegrityError), so the API maps them like any other.
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc
