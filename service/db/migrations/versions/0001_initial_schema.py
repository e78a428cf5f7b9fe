"""initial schema: tenants, api_keys, models, datasets, jobs, sensitivity_cache

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _upload_table(table: str, *extra: sa.Column) -> None:
    """Models and datasets: one uploaded file or folder each, named per tenant."""
    op.create_table(
        table,
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        *extra,
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        _time("created_at"),
        _fk(table, "tenant_id", "tenants", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
        sa.UniqueConstraint("tenant_id", "name", name=f"uq_{table}_tenant_id_name"),
    )
    op.create_index(f"ix_{table}_tenant_id", table, ["tenant_id"])


def _fk(table: str, column: str, target: str, **kw) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{target}.id"],
                                   name=f"fk_{table}_{column}_{target}", **kw)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("name", name="uq_tenants_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("label", sa.String(100), nullable=False),
        _time("created_at"),
        _time("revoked_at", nullable=True),
        _fk("api_keys", "tenant_id", "tenants", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])
    _upload_table("models", sa.Column("kind", sa.String(20), nullable=False),
                  sa.Column("architecture", sa.String(200), nullable=False))
    _upload_table("datasets", sa.Column("format", sa.String(20), nullable=False))
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("stage", sa.String(50), nullable=False),
        sa.Column("stage_progress", sa.Float(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.String(500), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("model_id", sa.Uuid(), nullable=True),
        sa.Column("dataset_id", sa.Uuid(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("artifact_path", sa.String(500), nullable=True),
        _time("created_at"),
        _time("updated_at"),
        _time("enqueued_at", nullable=True),
        _time("started_at", nullable=True),
        _time("finished_at", nullable=True),
        _time("heartbeat_at", nullable=True),
        _fk("jobs", "dataset_id", "datasets"),
        _fk("jobs", "model_id", "models"),
        _fk("jobs", "tenant_id", "tenants", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("tenant_id", "idempotency_key",
                            name="uq_jobs_tenant_id_idempotency_key"),
    )
    op.create_index("ix_jobs_status_heartbeat", "jobs", ["status", "heartbeat_at"])
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant_id", "created_at", "id"])
    op.create_table(
        "sensitivity_cache",
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("method", sa.String(50), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("compute_seconds", sa.Float(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.Column("first_job_id", sa.Uuid(), nullable=True),
        _time("created_at"),
        _time("last_used_at"),
        sa.PrimaryKeyConstraint("key", name="pk_sensitivity_cache"),
    )


def downgrade() -> None:
    for table in ("sensitivity_cache", "jobs", "models", "datasets", "api_keys", "tenants"):
        op.drop_table(table)
