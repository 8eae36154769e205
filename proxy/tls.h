/*
 * OpenSSL contexts: one terminating client TLS (client_tls_*), one originating TLS
 * towards the server (server_tls_*), rebuilt on reload.
 */
#ifndef PGSHUNT_TLS_H
#define PGSHUNT_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

#include "conf/conf.h"

void tls_global_init(void);

/* NULL with err filled when the certificate or key cannot be used. */
SSL_CTX *tls_client_side_ctx(const struct pgshunt_config *cfg, char *err, size_t errlen);

/* NULL with err filled when the CA file cannot be used (or TLS is disabled: err empty). */
SSL_CTX *tls_server_side_ctx(const struct pgshunt_config *cfg, char *err, size_t errlen);

#endif
