/*
 * imgc-cat: a tiny `cat` for the example images.
 *
 * Freestanding x86_64 Linux: no libc, no dynamic loader, raw system calls only,
 * so a `from "scratch"` image can run it. Prints each file named on the command
 * line to stdout (standard input when there are none, or for "-"). A file that
 * cannot be opened or read is reported as `imgc-cat: cannot open PATH` (or
 * `cannot read`) on stderr; the others are still printed and the exit status is 1.
 *
 * Build with ./build.sh (see ../../../README.md).
 */

#define SYS_READ 0
#define SYS_WRITE 1
#define SYS_OPEN 2
#define SYS_CLOSE 3
#define SYS_EXIT_GROUP 231
#define O_RDONLY 0
#define O_CLOEXEC 02000000
#define EINTR 4

typedef unsigned long usize;

static long sys3(long n, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return ret;
}

static usize str_len(const char *s)
{
    usize n = 0;
    while (s[n])
        n++;
    return n;
}

/* Writes all of buf; returns 0, or -1 on an error (e.g. a closed pipe). */
static int write_all(int fd, const char *buf, usize n)
{
    while (n > 0) {
        long r = sys3(SYS_WRITE, fd, (long)buf, (long)n);
        if (r == -EINTR)
            continue;
        if (r <= 0)
            return -1;
        buf += r;
        n -= (usize)r;
    }
    return 0;
}

static void complain(const char *what, const char *path)
{
    write_all(2, "imgc-cat: cannot ", 17);
    write_all(2, what, str_len(what));
    write_all(2, " ", 1);
    write_all(2, path, str_len(path));
    write_all(2, "\n", 1);
}

static char buf[64 * 1024];

/* Copies fd to stdout: 0 ok, 1 read error, 2 write error. */
static int copy(int fd)
{
    for (;;) {
        long r = sys3(SYS_READ, fd, (long)buf, sizeof buf);
        if (r == -EINTR)
            continue;
        if (r < 0)
            return 1;
        if (r == 0)
            return 0;
        if (write_all(1, buf, (usize)r) != 0)
            return 2;
    }
}

static int cat_main(long argc, char **argv)
{
    int status = 0;
    if (argc < 2) {
        int r = copy(0);
        if (r == 1)
            complain("read", "-");
        return r ? 1 : 0;
    }
    for (long i = 1; i < argc; i++) {
        const char *path = argv[i];
        int is_stdin = path[0] == '-' && path[1] == 0;
        long fd = is_stdin ? 0 : sys3(SYS_OPEN, (long)path, O_RDONLY | O_CLOEXEC, 0);
        if (fd < 0) {
            complain("open", path);
            status = 1;
            continue;
        }
        int r = copy((int)fd);
        if (!is_stdin)
            sys3(SYS_CLOSE, fd, 0, 0);
        if (r == 1) {
            complain("read", path);
            status = 1;
        } else if (r == 2) {
            return 1; /* stdout is gone: stop quietly, like cat on EPIPE */
        }
    }
    return status;
}

/* Called from _start with the initial stack pointer: argc, then argv. */
__attribute__((noreturn, used)) void imgc_cat_start(long *sp)
{
    int status = cat_main(sp[0], (char **)(sp + 1));
    sys3(SYS_EXIT_GROUP, status, 0, 0);
    __builtin_unreachable();
}

/* The entry point: clear the frame pointer, align the stack, pass the original sp. */
__asm__(".text\n"
        ".global _start\n"
        ".type _start, @function\n"
        "_start:\n"
        "    xor %rbp, %rbp\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call imgc_cat_start\n"
        "    ud2\n");
