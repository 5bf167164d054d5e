/*
 * pin_guard.c - tokentrust lab STAND-IN: a pass-through PKCS#11 module that gives a SoftHSM2
 * token the PIN policy of the real USB key (CertEurope / Gemalto Classic Client).
 *
 *   - 3 wrong user PINs lock the user PIN (C_Login answers CKR_PIN_LOCKED without asking
 *     the real module); the PUK (= SO PIN) unblocks it: SO login, then C_InitPIN;
 *   - 3 wrong PUKs lock the SO PIN for good (C_Login as SO, C_InitToken refused);
 *   - C_GetTokenInfo reports CKF_{USER,SO}_PIN_{COUNT_LOW,FINAL_TRY,LOCKED};
 *   - the counters live in a small state file (one line per token serial), written
 *     atomically under flock(2), so they survive processes like a real card's do.
 *
 * C_GetSlotList hides the spare uninitialised slot SoftHSM2 always adds (the real key shows
 * one token). Everything else is forwarded to the real module (SoftHSM2 by default) through
 * a copy of its own CK_FUNCTION_LIST. Configuration (later wins):
 *   defaults      module /usr/lib/softhsm/libsofthsm2.so, 3 tries each, state file
 *                 <SoftHSM tokendir>/pin_guard.state
 *   environment   PIN_GUARD_MODULE, PIN_GUARD_STATE, PIN_GUARD_MAX_USER_TRIES,
 *                 PIN_GUARD_MAX_SO_TRIES
 *   config file   $PIN_GUARD_CONF, else "pin_guard.conf" next to this library:
 *                 module = ..., state = ..., softhsm2_conf = ..., max_user_tries = N,
 *                 max_so_tries = N, delay_ms = N (softhsm2_conf is exported as SOFTHSM2_CONF so a
 *                 copy of this library bound to one lab token needs no environment at all).
 *   delay_ms      a slow token: C_GetTokenInfo, C_Login and C_SetPIN wait this long before answering (tests
 *                 of concurrent runs; PIN_GUARD_DELAY_MS in the environment too).
 *
 * This is test equipment, not a security boundary: whoever can write the state file can
 * reset the counters.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pkcs11_min.h"

#define PG_EXPORT __attribute__((visibility("default")))
#define PG_MAX_TOKENS 64
#define PG_SERIAL_LEN 32

static pthread_once_t pg_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t pg_mutex = PTHREAD_MUTEX_INITIALIZER;
static CK_RV pg_load_rv = CKR_GENERAL_ERROR;
static CK_FUNCTION_LIST *pg_real;  /* the wrapped module's list */
static CK_FUNCTION_LIST pg_list;   /* our copy, handed to callers */
static char pg_module[PATH_MAX] = "/usr/lib/softhsm/libsofthsm2.so";
static char pg_state[PATH_MAX];
static char pg_softhsm_conf[PATH_MAX];
static unsigned long pg_max_user = 3;
static unsigned long pg_max_so = 3;
static unsigned long pg_delay_ms = 0;

struct pg_entry {
    char serial[PG_SERIAL_LEN + 1];
    unsigned long user_fail;
    unsigned long so_fail;
};

__attribute__((format(printf, 1, 2))) static void pg_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("pin_guard: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void pg_copy(char *dst, const char *src)
{
    snprintf(dst, PATH_MAX, "%s", src);
}

static char *pg_trim(char *s)
{
    char *e;
    while (*s && isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static unsigned long pg_tries(const char *v, unsigned long dflt)
{
    char *end;
    unsigned long n = strtoul(v, &end, 10);
    return (end != v && n > 0 && n < 100) ? n : dflt;
}

/* Reads "key = value" lines; unknown keys are ignored. */
static void pg_read_conf(const char *path)
{
    char line[PATH_MAX + 64];
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        char *eq, *key, *val;
        if ((eq = strchr(line, '#')) != NULL)
            *eq = '\0';
        if ((eq = strchr(line, '=')) == NULL)
            continue;
        *eq = '\0';
        key = pg_trim(line);
        val = pg_trim(eq + 1);
        if (!strcmp(key, "module"))
            pg_copy(pg_module, val);
        else if (!strcmp(key, "state"))
            pg_copy(pg_state, val);
        else if (!strcmp(key, "softhsm2_conf"))
            pg_copy(pg_softhsm_conf, val);
        else if (!strcmp(key, "max_user_tries"))
            pg_max_user = pg_tries(val, pg_max_user);
        else if (!strcmp(key, "max_so_tries"))
            pg_max_so = pg_tries(val, pg_max_so);
        else if (!strcmp(key, "delay_ms"))
            pg_delay_ms = strtoul(val, NULL, 10) % 60000;
    }
    fclose(f);
}

/* The state file's default: next to the tokens, in SoftHSM's directories.tokendir. */
static void pg_default_state(void)
{
    char line[PATH_MAX + 64], dir[PATH_MAX - 32] = "/var/lib/softhsm/tokens";
    const char *conf = getenv("SOFTHSM2_CONF");
    FILE *f = fopen(conf && *conf ? conf : "/etc/softhsm/softhsm2.conf", "r");
    if (f) {
        while (fgets(line, sizeof line, f)) {
            char *eq = strchr(line, '=');
            if (line[0] == '#' || !eq)
                continue;
            *eq = '\0';
            if (!strcmp(pg_trim(line), "directories.tokendir"))
                snprintf(dir, sizeof dir, "%s", pg_trim(eq + 1));
        }
        fclose(f);
    }
    snprintf(pg_state, sizeof pg_state, "%s/pin_guard.state", dir);
}

static void pg_configure(void)
{
    const char *v;
    Dl_info info;
    char conf[PATH_MAX] = "";

    if ((v = getenv("PIN_GUARD_MODULE")) && *v)
        pg_copy(pg_module, v);
    if ((v = getenv("PIN_GUARD_STATE")) && *v)
        pg_copy(pg_state, v);
    if ((v = getenv("PIN_GUARD_MAX_USER_TRIES")) && *v)
        pg_max_user = pg_tries(v, pg_max_user);
    if ((v = getenv("PIN_GUARD_MAX_SO_TRIES")) && *v)
        pg_max_so = pg_tries(v, pg_max_so);
    if ((v = getenv("PIN_GUARD_DELAY_MS")) && *v)
        pg_delay_ms = strtoul(v, NULL, 10) % 60000;

    if ((v = getenv("PIN_GUARD_CONF")) && *v) {
        pg_copy(conf, v);
    } else if (dladdr((void *)&pg_configure, &info) && info.dli_fname) {
        char *slash;
        pg_copy(conf, info.dli_fname);
        slash = strrchr(conf, '/');
        if (slash)
            snprintf(slash + 1, sizeof conf - (size_t)(slash + 1 - conf), "pin_guard.conf");
        else
            pg_copy(conf, "pin_guard.conf");
    }
    if (conf[0])
        pg_read_conf(conf);
    if (pg_softhsm_conf[0])
        setenv("SOFTHSM2_CONF", pg_softhsm_conf, 1);
    if (!pg_state[0])
        pg_default_state();
}

static CK_RV pg_GetSlotList(CK_BBOOL present, CK_SLOT_ID *list, CK_ULONG *count);
static CK_RV pg_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO *info);
static CK_RV pg_InitToken(CK_SLOT_ID slot, CK_UTF8CHAR *pin, CK_ULONG len, CK_UTF8CHAR *label);
static CK_RV pg_InitPIN(CK_SESSION_HANDLE h, CK_UTF8CHAR *pin, CK_ULONG len);
static CK_RV pg_SetPIN(CK_SESSION_HANDLE h, CK_UTF8CHAR *old, CK_ULONG oldlen, CK_UTF8CHAR *new_pin,
                       CK_ULONG newlen);
static CK_RV pg_Login(CK_SESSION_HANDLE h, CK_USER_TYPE who, CK_UTF8CHAR *pin, CK_ULONG len);
PG_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST **list);

static void pg_load(void)
{
    void *lib;
    CK_C_GetFunctionList get;
    CK_RV rv;

    pg_configure();
    lib = dlopen(pg_module, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        pg_log("cannot load the wrapped module %s: %s", pg_module, dlerror());
        return;
    }
    *(void **)&get = dlsym(lib, "C_GetFunctionList");
    if (!get) {
        pg_log("%s has no C_GetFunctionList", pg_module);
        return;
    }
    rv = get(&pg_real);
    if (rv != CKR_OK || !pg_real) {
        pg_log("C_GetFunctionList of %s failed: 0x%lx", pg_module, rv);
        pg_load_rv = rv != CKR_OK ? rv : CKR_GENERAL_ERROR;
        return;
    }
    memcpy(&pg_list, pg_real, sizeof pg_list);
    pg_list.C_GetFunctionList = C_GetFunctionList;
    pg_list.C_GetSlotList = pg_GetSlotList;
    pg_list.C_GetTokenInfo = pg_GetTokenInfo;
    pg_list.C_InitToken = pg_InitToken;
    pg_list.C_InitPIN = pg_InitPIN;
    pg_list.C_SetPIN = pg_SetPIN;
    pg_list.C_Login = pg_Login;
    pg_load_rv = CKR_OK;
}

PG_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST **list)
{
    if (!list)
        return CKR_ARGUMENTS_BAD;
    pthread_once(&pg_once, pg_load);
    if (pg_load_rv != CKR_OK)
        return pg_load_rv;
    *list = &pg_list;
    return CKR_OK;
}

/* ---- the state file -------------------------------------------------------------------- */

/* Loads every entry; a missing file is an empty state. Returns the count, -1 on a read error. */
static int pg_state_read(struct pg_entry *e)
{
    char line[256];
    int n = 0;
    FILE *f = fopen(pg_state, "r");
    if (!f)
        return errno == ENOENT ? 0 : -1;
    while (n < PG_MAX_TOKENS && fgets(line, sizeof line, f)) {
        char serial[PG_SERIAL_LEN + 1];
        unsigned long u, s;
        if (line[0] == '#')
            continue;
        if (sscanf(line, "%32s %lu %lu", serial, &u, &s) == 3) {
            memcpy(e[n].serial, serial, sizeof serial);
            e[n].user_fail = u;
            e[n].so_fail = s;
            n++;
        }
    }
    fclose(f);
    return n;
}

/* Writes every entry to a temporary file, flushes it, then renames it over the state file. */
static int pg_state_write(const struct pg_entry *e, int n)
{
    char tmp[PATH_MAX + 32];
    int fd, i, ok;
    FILE *f;

    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", pg_state, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        unlink(tmp);
        return -1;
    }
    fprintf(f, "# pin_guard (tokentrust lab stand-in): <token serial> <wrong user PINs> <wrong SO PINs>\n");
    for (i = 0; i < n; i++)
        fprintf(f, "%s %lu %lu\n", e[i].serial, e[i].user_fail, e[i].so_fail);
    ok = fflush(f) == 0 && fsync(fd) == 0;
    if (fclose(f) != 0)
        ok = 0;
    if (!ok || rename(tmp, pg_state) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Cross-process lock: flock on "<state>.lock". Returns the fd, or -1. */
static int pg_state_lock(void)
{
    char path[PATH_MAX + 8];
    int fd;
    snprintf(path, sizeof path, "%s.lock", pg_state);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

static void pg_state_unlock(int fd)
{
    if (fd >= 0) {
        flock(fd, LOCK_UN);
        close(fd);
    }
}

/* The token's serial number (printable characters only), the key of its line in the state file. */
static void pg_serial_of_info(const CK_TOKEN_INFO *ti, CK_SLOT_ID slot, char *out)
{
    size_t i, n = 0;
    for (i = 0; i < sizeof ti->serialNumber; i++)
        if (ti->serialNumber[i] > ' ' && ti->serialNumber[i] < 0x7f)
            out[n++] = (char)ti->serialNumber[i];
    if (!n)
        n = (size_t)snprintf(out, PG_SERIAL_LEN + 1, "slot-%lu", slot);
    out[n] = '\0';
}

static CK_RV pg_serial_of_slot(CK_SLOT_ID slot, char *out)
{
    CK_TOKEN_INFO ti;
    CK_RV rv = pg_real->C_GetTokenInfo(slot, &ti);
    if (rv == CKR_OK)
        pg_serial_of_info(&ti, slot, out);
    return rv;
}

static CK_RV pg_session(CK_SESSION_HANDLE h, char *serial, CK_STATE *state)
{
    CK_SESSION_INFO si;
    CK_RV rv = pg_real->C_GetSessionInfo(h, &si);
    if (rv != CKR_OK)
        return rv;
    if (state)
        *state = si.state;
    return pg_serial_of_slot(si.slotID, serial);
}

/* One guarded operation: the counters of one token, read and written under both locks. */
struct pg_txn {
    struct pg_entry e[PG_MAX_TOKENS];
    int n;
    int idx;
    int lockfd;
};

static CK_RV pg_begin(struct pg_txn *t, const char *serial)
{
    int i;
    pthread_mutex_lock(&pg_mutex);
    t->lockfd = pg_state_lock();
    t->n = t->lockfd < 0 ? -1 : pg_state_read(t->e);
    if (t->n < 0) {
        pg_log("cannot use the PIN counter file %s: %s", pg_state, strerror(errno));
        pg_state_unlock(t->lockfd);
        pthread_mutex_unlock(&pg_mutex);
        return CKR_DEVICE_ERROR;  /* fail closed: no PIN reaches the token uncounted */
    }
    for (i = 0; i < t->n; i++)
        if (!strcmp(t->e[i].serial, serial))
            break;
    if (i == t->n) {
        if (t->n == PG_MAX_TOKENS)
            i = 0;  /* full: recycle the oldest line */
        else
            t->n++;
        snprintf(t->e[i].serial, sizeof t->e[i].serial, "%s", serial);
        t->e[i].user_fail = 0;
        t->e[i].so_fail = 0;
    }
    t->idx = i;
    return CKR_OK;
}

static CK_RV pg_end(struct pg_txn *t, int dirty, CK_RV rv)
{
    if (dirty && pg_state_write(t->e, t->n) != 0) {
        pg_log("cannot write the PIN counter file %s: %s", pg_state, strerror(errno));
        if (rv == CKR_OK)
            rv = CKR_DEVICE_ERROR;
    }
    pg_state_unlock(t->lockfd);
    pthread_mutex_unlock(&pg_mutex);
    return rv;
}

/* Counts the outcome of one PIN presentation; returns 1 when the counter changed. */
static int pg_count(unsigned long *fail, unsigned long max, CK_RV rv)
{
    if (rv == CKR_PIN_INCORRECT && *fail < max) {
        (*fail)++;
        return 1;
    }
    if (rv == CKR_OK && *fail) {
        *fail = 0;
        return 1;
    }
    return 0;
}

/* ---- the wrapped functions ------------------------------------------------------------- */

/* Like the real key's reader: only slots holding an initialised token are shown (SoftHSM2
 * always adds one spare slot with an uninitialised token; it is hidden here). */
static CK_RV pg_GetSlotList(CK_BBOOL present, CK_SLOT_ID *list, CK_ULONG *count)
{
    CK_SLOT_ID *all;
    CK_ULONG n = 0, i, kept = 0;
    CK_RV rv;

    if (!count)
        return CKR_ARGUMENTS_BAD;
    if ((rv = pg_real->C_GetSlotList(present, NULL, &n)) != CKR_OK)
        return rv;
    all = calloc(n ? n : 1, sizeof *all);
    if (!all)
        return CKR_HOST_MEMORY;
    if ((rv = pg_real->C_GetSlotList(present, all, &n)) != CKR_OK) {
        free(all);
        return rv;
    }
    for (i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (pg_real->C_GetTokenInfo(all[i], &ti) == CKR_OK && !(ti.flags & CKF_TOKEN_INITIALIZED))
            continue;
        all[kept++] = all[i];
    }
    if (list) {
        if (*count < kept)
            rv = CKR_BUFFER_TOO_SMALL;
        else
            memcpy(list, all, kept * sizeof *all);
    }
    *count = kept;
    free(all);
    return rv;
}

static void pg_slow(void)
{
    struct timespec ts;
    if (!pg_delay_ms)
        return;
    ts.tv_sec = (time_t)(pg_delay_ms / 1000);
    ts.tv_nsec = (long)(pg_delay_ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static CK_RV pg_Login(CK_SESSION_HANDLE h, CK_USER_TYPE who, CK_UTF8CHAR *pin, CK_ULONG len)
{
    char serial[PG_SERIAL_LEN + 1];
    struct pg_txn t;
    unsigned long *fail, max;
    int dirty;
    CK_RV rv;

    pg_slow();

    if (who != CKU_SO && who != CKU_USER && who != CKU_CONTEXT_SPECIFIC)
        return pg_real->C_Login(h, who, pin, len);
    if ((rv = pg_session(h, serial, NULL)) != CKR_OK)
        return rv;
    if ((rv = pg_begin(&t, serial)) != CKR_OK)
        return rv;
    fail = who == CKU_SO ? &t.e[t.idx].so_fail : &t.e[t.idx].user_fail;
    max = who == CKU_SO ? pg_max_so : pg_max_user;
    if (*fail >= max)
        return pg_end(&t, 0, CKR_PIN_LOCKED);
    rv = pg_real->C_Login(h, who, pin, len);
    dirty = pg_count(fail, max, rv);
    return pg_end(&t, dirty, rv);
}

static CK_RV pg_InitPIN(CK_SESSION_HANDLE h, CK_UTF8CHAR *pin, CK_ULONG len)
{
    char serial[PG_SERIAL_LEN + 1];
    struct pg_txn t;
    int dirty = 0;
    CK_RV rv;

    if ((rv = pg_session(h, serial, NULL)) != CKR_OK)
        return rv;
    if ((rv = pg_begin(&t, serial)) != CKR_OK)
        return rv;
    rv = pg_real->C_InitPIN(h, pin, len);  /* the real module insists on an SO session */
    if (rv == CKR_OK && t.e[t.idx].user_fail) {
        t.e[t.idx].user_fail = 0;  /* unblocked by the PUK */
        dirty = 1;
    }
    return pg_end(&t, dirty, rv);
}

static CK_RV pg_SetPIN(CK_SESSION_HANDLE h, CK_UTF8CHAR *old, CK_ULONG oldlen, CK_UTF8CHAR *new_pin,
                       CK_ULONG newlen)
{
    char serial[PG_SERIAL_LEN + 1];
    struct pg_txn t;
    CK_STATE state = 0;
    unsigned long *fail, max;
    int so, dirty;
    CK_RV rv;

    pg_slow();
    if ((rv = pg_session(h, serial, &state)) != CKR_OK)
        return rv;
    if ((rv = pg_begin(&t, serial)) != CKR_OK)
        return rv;
    so = state == CKS_RW_SO_FUNCTIONS;
    fail = so ? &t.e[t.idx].so_fail : &t.e[t.idx].user_fail;
    max = so ? pg_max_so : pg_max_user;
    if (*fail >= max)
        return pg_end(&t, 0, CKR_PIN_LOCKED);
    rv = pg_real->C_SetPIN(h, old, oldlen, new_pin, newlen);
    dirty = pg_count(fail, max, rv);
    return pg_end(&t, dirty, rv);
}

static CK_RV pg_InitToken(CK_SLOT_ID slot, CK_UTF8CHAR *pin, CK_ULONG len, CK_UTF8CHAR *label)
{
    char serial[PG_SERIAL_LEN + 1];
    struct pg_txn t;
    int dirty;
    CK_RV rv;

    if (pg_serial_of_slot(slot, serial) != CKR_OK)  /* an empty slot: nothing to guard yet */
        return pg_real->C_InitToken(slot, pin, len, label);
    if ((rv = pg_begin(&t, serial)) != CKR_OK)
        return rv;
    if (t.e[t.idx].so_fail >= pg_max_so)
        return pg_end(&t, 0, CKR_PIN_LOCKED);  /* a blocked PUK cannot be bypassed */
    rv = pg_real->C_InitToken(slot, pin, len, label);
    dirty = pg_count(&t.e[t.idx].so_fail, pg_max_so, rv);
    if (rv == CKR_OK && t.e[t.idx].user_fail) {
        t.e[t.idx].user_fail = 0;
        dirty = 1;
    }
    return pg_end(&t, dirty, rv);
}

static CK_FLAGS pg_flags(unsigned long fail, unsigned long max, CK_FLAGS low, CK_FLAGS final, CK_FLAGS locked)
{
    CK_FLAGS f = 0;
    if (fail > 0)
        f |= low;  /* a wrong PIN since the last success */
    if (fail >= max)
        f |= locked;
    else if (fail + 1 == max)
        f |= final;  /* one more wrong PIN locks */
    return f;
}

static CK_RV pg_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO *info)
{
    char serial[PG_SERIAL_LEN + 1];
    struct pg_txn t;
    CK_RV rv;

    pg_slow();
    rv = pg_real->C_GetTokenInfo(slot, info);
    if (rv != CKR_OK || !info)
        return rv;
    pg_serial_of_info(info, slot, serial);
    if ((rv = pg_begin(&t, serial)) != CKR_OK)
        return rv;
    info->flags &= ~(CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED |
                     CKF_SO_PIN_COUNT_LOW | CKF_SO_PIN_FINAL_TRY | CKF_SO_PIN_LOCKED);
    info->flags |= pg_flags(t.e[t.idx].user_fail, pg_max_user, CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_FINAL_TRY,
                            CKF_USER_PIN_LOCKED);
    info->flags |= pg_flags(t.e[t.idx].so_fail, pg_max_so, CKF_SO_PIN_COUNT_LOW, CKF_SO_PIN_FINAL_TRY,
                            CKF_SO_PIN_LOCKED);
    return pg_end(&t, 0, CKR_OK);
}
