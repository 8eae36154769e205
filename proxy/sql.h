/*
 * The SQL pgshunt installs in the application database, compiled in from
 * the files in proxy/sql/ (see embed.sh there): the control schema and the migration
 * functions.  Both scripts are idempotent.
 */
#ifndef PGSHUNT_SQL_H
#define PGSHUNT_SQL_H

extern const char sql_schema[];
extern const char sql_prepare[];
extern const char sql_jobs[];

#endif
