#include "proxy/tls.h"

#include <openssl/err.h>
#include <stdio.h>

void tls_global_init(void)
{
	OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL);
}

static void tls_error(char *err, size_t errlen, const char *what, const char *file)
{
	char detail[256] = "";
	unsigned long e = ERR_get_error();
	if (e)
		ERR_error_string_n(e, detail, sizeof(detail));
	snprintf(err, errlen, "%s \"%s\": %s", what, file, detail);
	ERR_clear_error();
}

/* Settings both sides share: modern protocols, partial writes, no idle buffers. */
static SSL_CTX *tls_ctx_new(const SSL_METHOD *method)
{
	SSL_CTX *ctx = SSL_CTX_new(method);
	if (!ctx)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
				      SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	return ctx;
}

SSL_CTX *tls_client_side_ctx(const struct pgshunt_config *cfg, char *err, size_t errlen)
{
	err[0] = '\0';
	if (cfg->client_tls_sslmode == SSLMODE_DISABLE)
		return NULL;
	SSL_CTX *ctx = tls_ctx_new(TLS_server_method());
	if (!ctx) {
		tls_error(err, errlen, "cannot create TLS context for", "clients");
		return NULL;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, cfg->client_tls_cert_file) != 1) {
		tls_error(err, errlen, "cannot load client_tls_cert_file", cfg->client_tls_cert_file);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, cfg->client_tls_key_file, SSL_FILETYPE_PEM) != 1) {
		tls_error(err, errlen, "cannot load client_tls_key_file", cfg->client_tls_key_file);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		tls_error(err, errlen, "key does not match certificate", cfg->client_tls_key_file);
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

SSL_CTX *tls_server_side_ctx(const struct pgshunt_config *cfg, char *err, size_t errlen)
{
	err[0] = '\0';
	if (cfg->server_tls_sslmode == SSLMODE_DISABLE)
		return NULL;
	SSL_CTX *ctx = tls_ctx_new(TLS_client_method());
	if (!ctx) {
		tls_error(err, errlen, "cannot create TLS context for", "server");
		return NULL;
	}
	bool verify = cfg->server_tls_sslmode >= SSLMODE_VERIFY_CA;
	if (cfg->server_tls_ca_file[0] &&
	    SSL_CTX_load_verify_locations(ctx, cfg->server_tls_ca_file, NULL) != 1) {
		tls_error(err, errlen, "cannot load server_tls_ca_file", cfg->server_tls_ca_file);
		SSL_CTX_free(ctx);
		return NULL;
	}
	SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
	return ctx;
}
