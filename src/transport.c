/*
 * transport.c
 *		One socket to a Redis endpoint, plain or TLS: the non-blocking connect, the TLS handshake and
 *		certificate checks (redislock.sslmode, sslrootcert, sslcert, sslkey), and the reads and writes.
 *
 * Nothing here waits: every step that cannot go on says which socket event it wants (TRANSPORT_WANT_*)
 * and redis_conn.c waits for it, on the latch as well and within its deadline. hiredis 0.14 does no
 * TLS, so redislock keeps hiredis for what it does well (the protocol reader, in redis_conn.c) and
 * moves the bytes itself, through OpenSSL (the library PostgreSQL itself links) when TLS is on.
 *
 * OpenSSL's per-thread error queue is shared with the backend's own SSL connection to its client:
 * every call here starts and ends with that queue empty.
 */
#include "redislock.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* The TLS settings made into an OpenSSL context once, and again after a setting changed. */
static SSL_CTX *tls_context = NULL;

/* OpenSSL's reason for the last failure (the queue is emptied), or fallback. */
static const char *
tls_reason(const char *fallback)
{
	static char buf[256];
	unsigned long code = ERR_get_error();
	const char *reason;

	ERR_clear_error();
	if (code == 0)
		return fallback;
	reason = ERR_reason_error_string(code);
	if (reason == NULL)
	{
		ERR_error_string_n(code, buf, sizeof(buf));
		return buf;
	}
	snprintf(buf, sizeof(buf), "%s", reason);
	return buf;
}

void
transport_settings_changed(void)
{
	if (tls_context != NULL)
	{
		SSL_CTX_free(tls_context);
		tls_context = NULL;
	}
}

/*
 * An encrypted redislock.sslkey has no passphrase to give: OpenSSL's default would prompt on the
 * terminal, and block the backend. Loading it fails instead.
 */
static int
no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
	return 0;
}

/* The context for redislock.sslmode and the certificate files; NULL with errbuf set on failure. */
static SSL_CTX *
tls_context_get(char *errbuf, size_t errlen)
{
	SSL_CTX    *ctx;

	if (tls_context != NULL)
		return tls_context;
	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL)
	{
		snprintf(errbuf, errlen, "could not create a TLS context: %s", tls_reason("out of memory"));
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
	/* a write that would block is retried later, maybe with more appended to a moved buffer */
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	if (redislock_sslmode >= REDIS_SSL_VERIFY_CA)
	{
		int			ok;

		if (redislock_sslrootcert[0] != '\0')
			ok = SSL_CTX_load_verify_locations(ctx, redislock_sslrootcert, NULL);
		else
			ok = SSL_CTX_set_default_verify_paths(ctx);
		if (ok != 1)
		{
			snprintf(errbuf, errlen, "could not load the certificate authorities of %s: %s",
					 redislock_sslrootcert[0] ? redislock_sslrootcert : "the system's CA store",
					 tls_reason("unknown error"));
			SSL_CTX_free(ctx);
			return NULL;
		}
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	}
	else
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	if (redislock_sslcert[0] != '\0' &&
		SSL_CTX_use_certificate_chain_file(ctx, redislock_sslcert) != 1)
	{
		snprintf(errbuf, errlen, "could not load client certificate %s: %s", redislock_sslcert,
				 tls_reason("unknown error"));
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (redislock_sslkey[0] != '\0' || redislock_sslcert[0] != '\0')
	{
		const char *key = redislock_sslkey[0] ? redislock_sslkey : redislock_sslcert;

		if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
			SSL_CTX_check_private_key(ctx) != 1)
		{
			snprintf(errbuf, errlen, "could not load client key %s: %s", key,
					 tls_reason("unknown error"));
			SSL_CTX_free(ctx);
			return NULL;
		}
	}
	ERR_clear_error();
	tls_context = ctx;
	return ctx;
}

static bool
host_is_ip(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* Whether host needs no resolving: an IPv4 or IPv6 address, or a Unix socket path. */
bool
transport_host_is_address(const char *host)
{
	return host[0] == '/' || host_is_ip(host);
}

static void
set_socket_options(Transport *t)
{
	int			one = 1;

	if (t->unix_socket)
		return;
	/* a round trip is one small write and one small read: never hold a segment back */
	(void) setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/* keepalive notices a peer that vanished without a word */
	(void) setsockopt(t->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
#ifdef TCP_KEEPIDLE
	{
		int			idle = 15,
					interval = 5,
					count = 3;

		(void) setsockopt(t->fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
		(void) setsockopt(t->fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
		(void) setsockopt(t->fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
	}
#endif
}

/* A non-blocking socket whose connect to addr has started; -1 with errbuf set on failure. */
static int
start_connect(int family, const struct sockaddr *addr, socklen_t addrlen, char *errbuf, size_t errlen)
{
	int			fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
	{
		snprintf(errbuf, errlen, "%s", strerror(errno));
		return -1;
	}
	if (connect(fd, addr, addrlen) < 0 && errno != EINPROGRESS && errno != EINTR)
	{
		snprintf(errbuf, errlen, "%s", strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Start connecting to host:port (or the Unix socket at host). Returns false with errbuf set when it
 * failed at once. A host name is resolved here, without a time bound: callers that must not wait on a
 * resolver pass addresses only (transport_host_is_address).
 */
bool
transport_open(Transport *t, const char *host, int port, char *errbuf, size_t errlen)
{
	memset(t, 0, sizeof(*t));
	t->fd = -1;
	if (host[0] == '/')
	{
		struct sockaddr_un sun;

		if (strlen(host) >= sizeof(sun.sun_path))
		{
			snprintf(errbuf, errlen, "socket path too long");
			return false;
		}
		memset(&sun, 0, sizeof(sun));
		sun.sun_family = AF_UNIX;
		strcpy(sun.sun_path, host);
		t->unix_socket = true;
		t->fd = start_connect(AF_UNIX, (struct sockaddr *) &sun, sizeof(sun), errbuf, errlen);
	}
	else
	{
		struct addrinfo hints;
		struct addrinfo *res = NULL;
		char		service[16];
		int			rc;

		/* IPv4 first, then IPv6, as hiredis does: "localhost" then reaches a Redis bound to 127.0.0.1 */
		snprintf(service, sizeof(service), "%d", port);
		memset(&hints, 0, sizeof(hints));
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_family = AF_INET;
		rc = getaddrinfo(host, service, &hints, &res);
		if (rc != 0)
		{
			hints.ai_family = AF_INET6;
			rc = getaddrinfo(host, service, &hints, &res);
		}
		if (rc != 0)
		{
			snprintf(errbuf, errlen, "%s", gai_strerror(rc));
			return false;
		}
		for (struct addrinfo *ai = res; ai != NULL && t->fd < 0; ai = ai->ai_next)
			t->fd = start_connect(ai->ai_family, ai->ai_addr, ai->ai_addrlen, errbuf, errlen);
		freeaddrinfo(res);
	}
	return t->fd >= 0;
}

/* The connect started by transport_open is over (the socket became writable): did it succeed? */
bool
transport_connected(Transport *t, char *errbuf, size_t errlen)
{
	int			sockerr = 0;
	socklen_t	len = sizeof(sockerr);

	if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &sockerr, &len) < 0)
		sockerr = errno;
	if (sockerr != 0)
	{
		snprintf(errbuf, errlen, "%s", strerror(sockerr));
		return false;
	}
	set_socket_options(t);
	return true;
}

/* What an SSL call that returned rc wants, or TRANSPORT_ERROR / TRANSPORT_EOF. */
static TransportStatus
tls_status(Transport *t, int rc)
{
	switch (SSL_get_error(t->ssl, rc))
	{
		case SSL_ERROR_WANT_READ:
			return TRANSPORT_WANT_READ;
		case SSL_ERROR_WANT_WRITE:
			return TRANSPORT_WANT_WRITE;
		case SSL_ERROR_ZERO_RETURN:
			return TRANSPORT_EOF;
		case SSL_ERROR_SYSCALL:
			/* an EOF without close_notify, or a socket error */
			return errno == 0 || errno == ECONNRESET ? TRANSPORT_EOF : TRANSPORT_ERROR;
		default:
			return TRANSPORT_ERROR;
	}
}

/*
 * One step of the TLS handshake with the Redis at host (the name or address the certificate must match
 * under verify-full). TRANSPORT_DONE when it is over, TRANSPORT_WANT_* to be called again once the
 * socket is ready, else TRANSPORT_ERROR with errbuf saying what failed and *certificate_problem set
 * when it was the server's certificate.
 */
TransportStatus
transport_tls_step(Transport *t, const char *host, char *errbuf, size_t errlen, bool *certificate_problem)
{
	int			rc;
	TransportStatus st;

	*certificate_problem = false;
	if (t->ssl == NULL)
	{
		SSL_CTX    *ctx = tls_context_get(errbuf, errlen);

		if (ctx == NULL)
			return TRANSPORT_ERROR;
		t->ssl = SSL_new(ctx);
		if (t->ssl == NULL || SSL_set_fd(t->ssl, t->fd) != 1)
		{
			snprintf(errbuf, errlen, "could not start TLS: %s", tls_reason("out of memory"));
			return TRANSPORT_ERROR;
		}
		if (!host_is_ip(host) && host[0] != '/')
			SSL_set_tlsext_host_name(t->ssl, host);
		if (redislock_sslmode == REDIS_SSL_VERIFY_FULL)
		{
			X509_VERIFY_PARAM *param = SSL_get0_param(t->ssl);
			int			ok;

			X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
			if (host_is_ip(host))
				ok = X509_VERIFY_PARAM_set1_ip_asc(param, host);
			else
				ok = X509_VERIFY_PARAM_set1_host(param, host, 0);
			if (ok != 1)
			{
				snprintf(errbuf, errlen, "could not set the name to verify: %s", tls_reason("unknown error"));
				return TRANSPORT_ERROR;
			}
		}
		SSL_set_connect_state(t->ssl);
	}
	ERR_clear_error();
	errno = 0;
	rc = SSL_do_handshake(t->ssl);
	if (rc == 1)
	{
		ERR_clear_error();
		return TRANSPORT_DONE;
	}
	st = tls_status(t, rc);
	if (st == TRANSPORT_WANT_READ || st == TRANSPORT_WANT_WRITE)
		return st;
	if (SSL_get_verify_result(t->ssl) != X509_V_OK)
	{
		long		v = SSL_get_verify_result(t->ssl);

		*certificate_problem = true;
		if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH)
			snprintf(errbuf, errlen, "the server's certificate does not match \"%s\"", host);
		else
			snprintf(errbuf, errlen, "the server's certificate is not trusted: %s",
					 X509_verify_cert_error_string(v));
	}
	else if (st == TRANSPORT_EOF)
		snprintf(errbuf, errlen, "the server closed the connection during the TLS handshake");
	else
		snprintf(errbuf, errlen, "TLS handshake failed: %s", tls_reason(strerror(errno)));
	ERR_clear_error();
	return TRANSPORT_ERROR;
}

/*
 * Read up to len bytes. Returns the count (> 0); or 0 with *st saying why: TRANSPORT_WANT_* (nothing
 * to read yet), TRANSPORT_EOF (the server closed the connection), TRANSPORT_ERROR (errbuf says).
 */
ssize_t
transport_read(Transport *t, char *buf, size_t len, TransportStatus *st, char *errbuf, size_t errlen)
{
	if (t->ssl != NULL)
	{
		int			rc;

		ERR_clear_error();
		errno = 0;
		rc = SSL_read(t->ssl, buf, (int) Min(len, INT_MAX));
		if (rc > 0)
			return rc;
		*st = tls_status(t, rc);
		if (*st == TRANSPORT_ERROR)
			snprintf(errbuf, errlen, "%s", tls_reason(strerror(errno)));
		ERR_clear_error();
		return 0;
	}
	for (;;)
	{
		ssize_t		n = read(t->fd, buf, len);

		if (n > 0)
			return n;
		if (n == 0)
			*st = TRANSPORT_EOF;
		else if (errno == EINTR)
			continue;
		else if (errno == EAGAIN || errno == EWOULDBLOCK)
			*st = TRANSPORT_WANT_READ;
		else
		{
			*st = errno == ECONNRESET ? TRANSPORT_EOF : TRANSPORT_ERROR;
			snprintf(errbuf, errlen, "%s", strerror(errno));
		}
		return 0;
	}
}

/* Write up to len bytes; as transport_read. */
ssize_t
transport_write(Transport *t, const char *buf, size_t len, TransportStatus *st, char *errbuf, size_t errlen)
{
	if (t->ssl != NULL)
	{
		int			rc;

		ERR_clear_error();
		errno = 0;
		rc = SSL_write(t->ssl, buf, (int) Min(len, INT_MAX));
		if (rc > 0)
			return rc;
		*st = tls_status(t, rc);
		if (*st != TRANSPORT_WANT_READ && *st != TRANSPORT_WANT_WRITE)
		{
			*st = TRANSPORT_ERROR;
			snprintf(errbuf, errlen, "%s", tls_reason(errno ? strerror(errno) : "connection closed"));
		}
		ERR_clear_error();
		return 0;
	}
	for (;;)
	{
		ssize_t		n = send(t->fd, buf, len, MSG_NOSIGNAL);

		if (n > 0)
			return n;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			*st = TRANSPORT_WANT_WRITE;
		else
		{
			*st = TRANSPORT_ERROR;
			snprintf(errbuf, errlen, "%s", n < 0 ? strerror(errno) : "nothing written");
		}
		return 0;
	}
}

/* Whether TLS holds bytes already read from the socket but not handed out: no need to wait for it. */
bool
transport_has_buffered(Transport *t)
{
	return t->ssl != NULL && SSL_pending(t->ssl) > 0;
}

/*
 * Whether an idle connection is still up, as far as the kernel knows, without a round trip: an idle
 * connection has nothing to read, so a readable socket means the server closed it or sent something
 * unasked. Under TLS a readable socket may carry only what the server sends after the handshake
 * (TLS 1.3 session tickets): OpenSSL consumes those, and the connection is still idle.
 */
bool
transport_idle_intact(Transport *t)
{
	for (int tries = 0; tries < 4; tries++)
	{
		struct pollfd pfd;
		char		byte;
		int			rc;

		pfd.fd = t->fd;
		pfd.events = POLLIN;
		pfd.revents = 0;
		if (poll(&pfd, 1, 0) == 0)
			return !transport_has_buffered(t);
		if (t->ssl == NULL)
			return false;
		ERR_clear_error();
		rc = SSL_peek(t->ssl, &byte, 1);
		if (rc > 0 || tls_status(t, rc) != TRANSPORT_WANT_READ)
		{
			ERR_clear_error();
			return false;
		}
		ERR_clear_error();
	}
	return false;
}

/* Close the socket, if open. Never waits (no close_notify: the server does not need one). */
void
transport_close(Transport *t)
{
	if (t->ssl != NULL)
	{
		SSL_free(t->ssl);
		t->ssl = NULL;
	}
	if (t->fd >= 0)
	{
		close(t->fd);
		t->fd = -1;
	}
	ERR_clear_error();
}
