/*
 * What placing a small file costs the kernel, two ways, without xfer:
 * 10,000 files of 4 KiB in 100 directories, each written, given its mode
 * and mtime, and put under its final name.
 *
 *   mode 0: as xfer does today: a named partial file (O_CREAT|O_EXCL,
 *           flock), write, fstat, fchmod, futimens, renameat2(NOREPLACE),
 *           fstatat of the final name, close.
 *   mode 1: an unnamed file (O_TMPFILE), write, fstat, fchmod, futimens,
 *           linkat(AT_EMPTY_PATH) to the final name (never replacing one),
 *           close. Not resumable, and linkat with AT_EMPTY_PATH needs
 *           CAP_DAC_READ_SEARCH (or /proc/self/fd without it).
 *
 *   gcc -O2 -o /tmp/placing bench/placing.c
 *   d=$(mktemp -d /dev/shm/p.XXXXXX); /tmp/placing "$d" 0; rm -rf "$d"
 *   d=$(mktemp -d /dev/shm/p.XXXXXX); /tmp/placing "$d" 1; rm -rf "$d"
 *
 * Figures are in docs/PERFORMANCE.md ("Less work per small file").
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void check(int ok, const char *what) {
  if (!ok) {
    perror(what);
    exit(1);
  }
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: placing DIR 0|1\n");
    return 2;
  }
  const char *root = argv[1];
  int mode = atoi(argv[2]);
  enum { FILES = 10000, DIRS = 100 };
  char buf[4096];
  memset(buf, 7, sizeof buf);
  int dirs[DIRS];
  char path[512];
  for (int d = 0; d < DIRS; d++) {
    snprintf(path, sizeof path, "%s/d%d", root, d);
    check(mkdir(path, 0755) == 0, "mkdir");
    dirs[d] = open(path, O_RDONLY | O_DIRECTORY);
    check(dirs[d] >= 0, "open dir");
  }
  struct timespec times[2] = {{0, UTIME_OMIT}, {1600000000, 0}};
  double t0 = now();
  for (int i = 0; i < FILES; i++) {
    int dir = dirs[i % DIRS];
    char name[64], temp[64];
    struct stat st;
    snprintf(name, sizeof name, "f%d", i);
    snprintf(temp, sizeof temp, ".xfer-%016x-abcd.partial", i);
    int fd;
    if (mode == 0) {
      fd = openat(dir, temp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
      check(fd >= 0, "openat");
      check(flock(fd, LOCK_EX | LOCK_NB) == 0, "flock");
    } else {
      fd = openat(dir, ".", O_RDWR | O_TMPFILE | O_CLOEXEC, 0600);
      check(fd >= 0, "openat O_TMPFILE");
    }
    check(write(fd, buf, sizeof buf) == sizeof buf, "write");
    check(fstat(fd, &st) == 0, "fstat");
    check(fchmod(fd, 0644) == 0, "fchmod");
    check(futimens(fd, times) == 0, "futimens");
    if (mode == 0) {
      check(syscall(SYS_renameat2, dir, temp, dir, name, RENAME_NOREPLACE) == 0, "renameat2");
      check(fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0, "fstatat");
    } else {
      check(linkat(fd, "", dir, name, AT_EMPTY_PATH) == 0, "linkat");
    }
    close(fd);
  }
  printf("mode %d: %d files placed in %.1f ms\n", mode, FILES, (now() - t0) * 1000);
  return 0;
}
