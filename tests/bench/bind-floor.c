/* The kernel's floor for a store view of a closure, for tests/bench/scale-vs-nix.sh: run in
 * namespaces of its own (`unshare -Urm`), it mounts a tmpfs on DIR and, for each store path
 * named on stdin, makes a mount point in it (a directory or an empty file, after one `stat`)
 * and binds the path there: one mount(MS_BIND) each, not made read-only, nothing else. A
 * sandbox that shows a builder exactly its closure by binding each path pays at least this,
 * and the namespace's teardown at exit. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: bind-floor DIR < store-paths\n");
        return 2;
    }
    if (mount("tmpfs", argv[1], "tmpfs", 0, NULL) != 0) {
        perror("mount tmpfs");
        return 1;
    }
    char path[4096], point[8192];
    while (fgets(path, sizeof path, stdin)) {
        path[strcspn(path, "\n")] = 0;
        const char *slash = strrchr(path, '/');
        snprintf(point, sizeof point, "%s/%s", argv[1], slash ? slash + 1 : path);
        struct stat st;
        if (stat(path, &st) != 0) {
            perror(path);
            return 1;
        }
        if ((S_ISDIR(st.st_mode) ? mkdir(point, 0755) : mknod(point, S_IFREG | 0644, 0)) != 0
            || mount(path, point, NULL, MS_BIND, NULL) != 0) {
            perror(point);
            return 1;
        }
    }
    return 0;
}
