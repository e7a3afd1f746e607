/* The kernel's floor for a store view of a closure, for tests/bench/scale-vs-nix.sh. Run in
 * namespaces of its own (`unshare -Urm`), it mounts a tmpfs on DIR and, for each store path
 * named on stdin, makes a mount point in it (a directory or an empty file, after one `stat`)
 * and binds the path there: one mount(MS_BIND) each, not made read-only, nothing else. A
 * sandbox that shows a builder exactly its closure by binding each path pays at least this,
 * and the namespace's teardown at exit (time the whole process).
 *
 * With K, it then starts K processes one after another, each in a new mount namespace (a
 * copy of this one, the binds included) that it leaves at once, and prints the mean wall
 * time of one in microseconds: what a build in a series pays at least when its view of the
 * closure is made by copying bound mounts rather than binding each path again (the copy and
 * the teardown; attaching the copy, as a keeper of views does, costs more). */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: bind-floor DIR [K] < store-paths\n");
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
    if (argc == 2)
        return 0;
    long k = atol(argv[2]);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < k; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0)
            _exit(unshare(CLONE_NEWNS) == 0 ? 0 : 1);
        int status;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "unshare(CLONE_NEWNS) failed in a child\n");
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / (k ? k : 1);
    printf("%.1f\n", us);
    return 0;
}
