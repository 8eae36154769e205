/*
 * guard_direct_writes: from dual_write on, the database itself refuses writes to the
 * table, next_table and buffer_table that do not come through pgshunt (SPEC §7), so a
 * forgotten cron job cannot write one table of the pair only.
 *
 * A statement-level trigger (BEFORE INSERT, UPDATE, DELETE, TRUNCATE) named
 * pgshunt_guard on each of them raises 42501 unless the session setting pgshunt.via
 * is 'on'.  Every server connection pgshunt opens for a client carries that setting
 * in its startup packet (so RESET ALL and DISCARD ALL keep it); pgshunt's own
 * connections that write those tables (backfill, drain) must set it too: use
 * GUARD_CONNINFO_OPTIONS in their conninfo or run GUARD_SET_SQL once connected.
 *
 * It guards against mistakes, not malice: anyone may set pgshunt.via.  Statement
 * triggers on a partitioned table do not fire for writes aimed at one partition
 * directly.
 *
 * Each proxy with guard_direct_writes = on installs the triggers when it sees a phase
 * from dual_write on (and checks every 30 s that they are there), and removes them in
 * passthrough.  A proxy whose key is off removes them once: at start (a previous run
 * may have left them) and when a reload turns the key off.  Installation is
 * idempotent and serialised by an advisory lock.  Set the key alike on every proxy.
 */
#ifndef PGSHUNT_GUARD_H
#define PGSHUNT_GUARD_H

#define GUARD_SETTING          "pgshunt.via"
#define GUARD_VALUE            "on"
#define GUARD_CONNINFO_OPTIONS "-c " GUARD_SETTING "=" GUARD_VALUE
#define GUARD_SET_SQL          "SET " GUARD_SETTING " = '" GUARD_VALUE "'"
#define GUARD_TRIGGER          "pgshunt_guard"

/* Reconcile the triggers with the phase and the key (called every second; cheap). */
void guard_tick(void);
void guard_stop(void);

#endif
