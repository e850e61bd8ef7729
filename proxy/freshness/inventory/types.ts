/**
 * The sealed inventory of a data directory (issue 22): per data file its identity, size and witness
 * pages. Witness = a page and the LSN it carried at the sweep; page LSNs only move forward, so at the next
 * start a witness page with a smaller LSN proves the file was put back to an older copy.
 *
 * The inventory lives in its own sealed file on the volume (inventory-store.ts); the freshness record
 * carries only an InventoryRef (its digest), so the record the CAS counts stays small and a seal pays
 * nothing for the inventory's size.
 */

export interface Witness {
  page: number;
  /** Page LSN as a decimal string (JSON has no u64). */
  lsn: string;
}

export interface InventoryFile {
  /** Path relative to the data directory, '/' separated. */
  path: string;
  kind: 'innodb-system' | 'innodb-undo' | 'innodb-table';
  /** InnoDB space id from page 0. */
  spaceId: number;
  pageSize: number;
  /** File size in pages at the sweep. */
  pages: number;
  /** The highest-LSN self-consistent pages at or below the sweep's durable LSN, highest first. */
  witnesses: Witness[];
}

export interface Inventory {
  engine: 'mariadb';
  /** Redo checkpoint LSN read before the sweep began: a file created later has no page below it. */
  startLsn: string;
  /** Redo checkpoint LSN read after the sweep: witnesses are at or below it, i.e. durable. */
  durableLsn: string;
  takenAt: string;
  files: InventoryFile[];
}

/** What the sealed freshness record says about the inventory (record.ts `inventory`). */
export interface InventoryRef {
  /** SHA-256 (hex) of the sealed inventory file. */
  digest: string;
  startLsn: string;
  durableLsn: string;
  /**
   * True only for the sweep taken after the database shut down cleanly and sealed by the final epoch:
   * nothing changed since, so any difference is a violation. Otherwise DDL since the sweep may explain a
   * missing or moved file, which the online check decides.
   */
  exact: boolean;
  files: number;
  takenAt: string;
}

/** A data file found on the volume now (what the start-up check compares with the inventory). */
export interface ObservedFile {
  path: string;
  kind: InventoryFile['kind'];
  /** Undefined when page 0 is unreadable (empty or truncated file). */
  spaceId?: number;
  pageSize: number;
  pages: number;
}

/**
 * PostgreSQL's inventory (postgres-inventory.ts): identity is the path (base/<db oid>/<relfilenode>[.k],
 * global/<relfilenode>[.k], pg_xact/<segment>), because a relfilenode is never reused for other contents
 * while its file exists and VACUUM FULL / TRUNCATE / CLUSTER write a new relfilenode.
 */
export interface PgInventoryFile {
  path: string;
  kind: 'pg-relation' | 'pg-xact';
  /** File size in 8 KiB blocks at the sweep. */
  pages: number;
  /** Relation files: the highest-pd_lsn pages at or below the sweep's durable LSN, highest first. */
  witnesses: Witness[];
  /** pg_xact segments: the highest xid (offset in the segment) with a final status, and that status. */
  xact?: { offset: number; status: number };
}

export interface PgInventory {
  engine: 'postgres';
  /** WAL position before the sweep began: a relation file created later has no page below it. */
  startLsn: string;
  /** Witness pages are at or below it (a completed checkpoint's redo LSN, or everything after a clean stop). */
  durableLsn: string;
  takenAt: string;
  files: PgInventoryFile[];
}

/** A PostgreSQL data file found on the volume now. */
export interface PgObservedFile {
  path: string;
  kind: PgInventoryFile['kind'];
  pages: number;
}
