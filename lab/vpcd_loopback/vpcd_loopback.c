/* tokentrust lab: keep vsmartcard-vpcd's reader on 127.0.0.1.
 *
 * vpcd (Debian's vsmartcard-vpcd, the virtual reader driver loaded by pcscd) binds its card socket to
 * INADDR_ANY with no option to change it. Preloaded into pcscd only (LD_PRELOAD in /etc/default/pcscd or a
 * systemd drop-in), this turns an IPv4 bind to 0.0.0.0 into a bind to 127.0.0.1: the network rule of the lab
 * (nothing listens beyond loopback). Every other bind passes through unchanged.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    static bind_fn real_bind;
    struct sockaddr_in loop;

    if (!real_bind)
        real_bind = (bind_fn) dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= (socklen_t) sizeof loop
            && ((const struct sockaddr_in *) addr)->sin_addr.s_addr == htonl(INADDR_ANY)) {
        memcpy(&loop, addr, sizeof loop);
        loop.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return real_bind(fd, (const struct sockaddr *) &loop, sizeof loop);
    }
    return real_bind(fd, addr, len);
}
