/*
 * A FAKE libvppapiclient.so for the tests of datasync.vpp.vac: the real library's
 * vac_* signatures (vppapiclient.h) over an in-process loopback, so the cffi binding,
 * the reader thread and the error mapping are exercised without VPP.
 *
 * vac_write of control_ping queues a control_ping_reply for vac_read;
 * want_interface_events queues its reply and, when enabling, one sw_interface_event.
 * Anything else is counted and gets no reply (as VPP does with unknown ids).
 * fake_vac_* functions let the test inject faults and read counters.
 *
 * VPP's input queue is modelled when "VPP" is dead (killed, or SIGSTOPped): every write
 * waits in it unanswered, and once it holds queue_limit messages (1024, as VPP's
 * api-queue) vac_write and vac_disconnect's goodbye wait for room, as the real
 * svm_queue_add does, for good: only reviving "VPP" (or the test's safety valve,
 * block_ms) lets them go. Threads that waited are recorded by kernel thread id.
 *
 * vac_connect with a callback starts an rx thread that hands every message to it (and
 * frees it after), as the real library's async mode does; vac_disconnect stops and
 * joins it before anything else.
 *
 * With fake_vac_set_timeout_thread(1), vac_read with a timeout pokes a timeout thread
 * before it waits and again after, as the real library does (set_timeout and
 * unset_timeout in client.c), so the cost of that handshake can be measured.
 *
 * Built by the test with: cc -shared -fPIC -pthread -o libvppapiclient.so fake_vac.c
 */
#include <errno.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define VAC_NOT_CONNECTED -3
#define VAC_SHM_NOT_READY -4
#define VAC_TIMEOUT -5

typedef void (*vac_callback_t) (unsigned char *data, int len);
typedef void (*vac_error_callback_t) (void *, unsigned char *, int);

/* name_crc table, ids as VPP numbers memclnt (23/24) and some plugin block */
static const struct
{
  const char *name;
  int id;
} table[] = {
  { "sockclnt_delete_8ac76db6", 17 },
  { "control_ping_51077d14", 23 },
  { "control_ping_reply_f6b0b8ca", 24 },
  { "want_interface_events_476f5a08", 600 },
  { "want_interface_events_reply_e8d4e804", 601 },
  { "sw_interface_event_2d3d95a7", 602 },
};
#define N_TABLE (sizeof (table) / sizeof (table[0]))
#define ID_CONTROL_PING 23
#define ID_CONTROL_PING_REPLY 24
#define ID_WANT_IF_EVENTS 600
#define ID_WANT_IF_EVENTS_REPLY 601
#define ID_SW_IF_EVENT 602
#define CLIENT_INDEX 0x01020304u /* native order, as the real library writes it */

typedef struct msg
{
  struct msg *next;
  int len;
  unsigned char data[];
} msg_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static msg_t *head, *tail;
static int connected;
static int mem_inits, connects, disconnects, writes, reads;
static long outstanding; /* buffers handed out by vac_read and not yet vac_free'd */
static int counts[1024];
static int connect_result, write_result, read_result, bad_read, hang, connect_delay_ms;
static int events_enabled;
/* the dead-peer model: messages waiting in VPP's input queue, its length, the threads
   that waited for room (kernel tids), and how long one may wait before the valve */
static int dead, inq, queue_limit = 1024, block_ms = 10000, blocked, valve_expired;
#define MAX_TIDS 64
static long blocked_tids[MAX_TIDS];
static uint32_t vpe_pid = 4242;
static char last_name[64], last_prefix[64];
static int last_rx_qlen = -1, had_callback;

/* async mode: the library's rx thread calls the callback with each message */
static vac_callback_t rx_cb;
static pthread_t rx_thread;
static int rx_running, rx_exit;

static void *
rx_fn (void *arg)
{
  msg_t *m;
  (void) arg;
  pthread_mutex_lock (&lock);
  for (;;)
    {
      while (!head && !rx_exit)
        pthread_cond_wait (&cond, &lock);
      if (!head)
        break; /* RX_THREAD_EXIT: it queues behind what came before */
      m = head;
      head = m->next;
      if (!head)
        tail = 0;
      outstanding++;
      reads++;
      pthread_mutex_unlock (&lock);
      rx_cb (m->data, m->len);
      pthread_mutex_lock (&lock);
      outstanding--;
      free (m);
    }
  pthread_mutex_unlock (&lock);
  return 0;
}

/* the real library's timeout thread: poked by every vac_read with a timeout */
static pthread_mutex_t t_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t t_cv = PTHREAD_COND_INITIALIZER, t_cancel_cv = PTHREAD_COND_INITIALIZER;
static int t_enabled, t_started, t_timeout, t_cancelled;
static pthread_t t_thread;

static void *
timeout_thread (void *arg)
{
  struct timespec ts;
  (void) arg;
  pthread_mutex_lock (&t_lock);
  for (;;)
    {
      while (!t_timeout)
        pthread_cond_wait (&t_cv, &t_lock);
      clock_gettime (CLOCK_REALTIME, &ts);
      ts.tv_sec += t_timeout;
      t_timeout = 0;
      while (!t_cancelled)
        if (pthread_cond_timedwait (&t_cancel_cv, &t_lock, &ts) == ETIMEDOUT)
          break; /* the real one queues a read-timeout pseudo-message here */
      t_cancelled = 0;
    }
  return 0;
}

static void
set_timeout (int timeout)
{
  pthread_mutex_lock (&t_lock);
  if (!t_started)
    {
      pthread_create (&t_thread, 0, timeout_thread, 0);
      pthread_detach (t_thread);
      t_started = 1;
    }
  t_timeout = timeout;
  pthread_cond_signal (&t_cv);
  pthread_mutex_unlock (&t_lock);
}

static void
unset_timeout (void)
{
  pthread_mutex_lock (&t_lock);
  t_cancelled = 1;
  pthread_cond_signal (&t_cancel_cv);
  pthread_mutex_unlock (&t_lock);
}

static void
put_be16 (unsigned char *p, uint16_t v)
{
  p[0] = v >> 8;
  p[1] = v;
}

static void
put_be32 (unsigned char *p, uint32_t v)
{
  p[0] = v >> 24;
  p[1] = v >> 16;
  p[2] = v >> 8;
  p[3] = v;
}

/* caller holds the lock */
static void
enqueue (const unsigned char *data, int len)
{
  msg_t *m = malloc (sizeof (msg_t) + len);
  if (!m)
    return;
  m->next = 0;
  m->len = len;
  memcpy (m->data, data, len);
  if (tail)
    tail->next = m;
  else
    head = m;
  tail = m;
  pthread_cond_broadcast (&cond);
}

static void
clear_queue (void)
{
  while (head)
    {
      msg_t *m = head;
      head = m->next;
      free (m);
    }
  tail = 0;
}

/* caller holds the lock: a message goes into dead VPP's input queue, waiting for room
   like svm_queue_add; returns 0, or -1 when the valve expired or we were disconnected */
static int
dead_enqueue (void)
{
  struct timespec deadline;
  if (inq >= queue_limit)
    {
      long tid = (long) syscall (SYS_gettid);
      if (blocked < MAX_TIDS)
        blocked_tids[blocked] = tid;
      blocked++;
      clock_gettime (CLOCK_REALTIME, &deadline);
      deadline.tv_sec += block_ms / 1000;
      deadline.tv_nsec += (long) (block_ms % 1000) * 1000000L;
      if (deadline.tv_nsec >= 1000000000L)
        {
          deadline.tv_sec++;
          deadline.tv_nsec -= 1000000000L;
        }
      while (dead && inq >= queue_limit)
        if (pthread_cond_timedwait (&cond, &lock, &deadline) == ETIMEDOUT)
          {
            valve_expired++;
            return -1;
          }
    }
  if (dead)
    inq++;
  return 0;
}

void
vac_mem_init (size_t size)
{
  (void) size;
  pthread_mutex_lock (&lock);
  mem_inits++;
  pthread_mutex_unlock (&lock);
}

int
vac_connect (char *name, char *chroot_prefix, vac_callback_t cb, int rx_qlen)
{
  int rv, delay;
  struct timespec ts;
  pthread_mutex_lock (&lock);
  delay = connect_delay_ms;
  pthread_mutex_unlock (&lock);
  if (delay > 0)
    {
      /* the real vac_connect waits up to 10 s for memclnt_create_reply */
      ts.tv_sec = delay / 1000;
      ts.tv_nsec = (long) (delay % 1000) * 1000000L;
      nanosleep (&ts, 0);
    }
  pthread_mutex_lock (&lock);
  strncpy (last_name, name ? name : "", sizeof (last_name) - 1);
  strncpy (last_prefix, chroot_prefix ? chroot_prefix : "", sizeof (last_prefix) - 1);
  last_rx_qlen = rx_qlen;
  had_callback = cb != 0;
  rv = connect_result;
  if (rv == 0 && dead)
    rv = -1; /* no VPP to answer memclnt_create */
  if (rv == 0 && connected)
    rv = -1; /* the real library keeps one connection per process */
  if (rv == 0)
    {
      connected = 1;
      connects++;
      events_enabled = 0;
      if (cb)
        {
          rx_cb = cb;
          rx_exit = 0;
          rx_running = pthread_create (&rx_thread, 0, rx_fn, 0) == 0;
        }
    }
  pthread_mutex_unlock (&lock);
  return rv;
}

int
vac_disconnect (void)
{
  pthread_mutex_lock (&lock);
  if (rx_running)
    {
      /* like the real one: RX_THREAD_EXIT into our own queue, then join */
      rx_exit = 1;
      rx_running = 0;
      pthread_cond_broadcast (&cond);
      pthread_mutex_unlock (&lock);
      pthread_join (rx_thread, 0);
      pthread_mutex_lock (&lock);
    }
  if (connected && dead)
    dead_enqueue (); /* memclnt_delete: waits for room like any write */
  if (connected)
    {
      connected = 0;
      disconnects++;
      clear_queue ();
      pthread_cond_broadcast (&cond);
    }
  pthread_mutex_unlock (&lock);
  return 0;
}

int
vac_write (char *p, int l)
{
  unsigned char *copy, out[32];
  int id, rv = 0;

  pthread_mutex_lock (&lock);
  if (!connected)
    {
      pthread_mutex_unlock (&lock);
      return -1;
    }
  if (write_result)
    {
      rv = write_result;
      pthread_mutex_unlock (&lock);
      return rv;
    }
  writes++;
  if (l < 6)
    {
      pthread_mutex_unlock (&lock);
      return 0;
    }
  /* like the real library: copy, then stamp our own client index over bytes 2..5 */
  copy = malloc (l);
  memcpy (copy, p, l);
  {
    uint32_t ci = CLIENT_INDEX;
    memcpy (copy + 2, &ci, 4);
  }
  id = (copy[0] << 8) | copy[1];
  if (id < 1024)
    counts[id]++;
  if (hang)
    goto done;
  if (dead)
    {
      rv = dead_enqueue (); /* never answered */
      goto done;
    }
  if (id == ID_CONTROL_PING && l >= 10)
    {
      put_be16 (out, ID_CONTROL_PING_REPLY);
      memcpy (out + 2, copy + 6, 4); /* context */
      put_be32 (out + 6, 0);         /* retval */
      memcpy (out + 10, copy + 2, 4); /* client_index, echoed raw */
      put_be32 (out + 14, vpe_pid);
      enqueue (out, 18);
    }
  else if (id == ID_WANT_IF_EVENTS && l >= 18)
    {
      uint32_t enable = ((uint32_t) copy[10] << 24) | (copy[11] << 16) | (copy[12] << 8) | copy[13];
      int retval = (enable != 0) == (events_enabled != 0) ? -31 : 0; /* INVALID_REGISTRATION */
      put_be16 (out, ID_WANT_IF_EVENTS_REPLY);
      memcpy (out + 2, copy + 6, 4);
      put_be32 (out + 6, (uint32_t) retval);
      enqueue (out, 10);
      if (retval == 0)
        {
          events_enabled = enable != 0;
          if (events_enabled)
            {
              put_be16 (out, ID_SW_IF_EVENT);
              memcpy (out + 2, copy + 2, 4);  /* client_index */
              memcpy (out + 6, copy + 14, 4); /* pid, echoed raw */
              put_be32 (out + 10, 1);         /* sw_if_index */
              put_be32 (out + 14, 3);         /* flags: admin up | link up */
              out[18] = 0;                    /* deleted */
              enqueue (out, 19);
            }
        }
    }
done:
  free (copy);
  pthread_mutex_unlock (&lock);
  return rv;
}

static int read_locked (char **p, int *l, unsigned short timeout);

int
vac_read (char **p, int *l, unsigned short timeout)
{
  int rv;

  int poked = 0;
  if (timeout && t_enabled)
    {
      set_timeout (timeout);
      poked = 1;
    }
  rv = read_locked (p, l, timeout);
  if (poked)
    unset_timeout ();
  return rv;
}

static int
read_locked (char **p, int *l, unsigned short timeout)
{
  struct timespec deadline;
  msg_t *m;
  int rv;

  pthread_mutex_lock (&lock);
  *l = 0;
  if (!connected)
    {
      pthread_mutex_unlock (&lock);
      return VAC_NOT_CONNECTED;
    }
  if (read_result)
    {
      rv = read_result;
      read_result = 0;
      pthread_mutex_unlock (&lock);
      return rv;
    }
  if (bad_read)
    {
      int mode = bad_read;
      bad_read = 0;
      if (mode == 1)
        {
          *p = 0; /* "success" without a message */
          *l = 10;
        }
      else
        {
          *p = malloc (16);
          outstanding++;
          *l = -7; /* negative length */
        }
      pthread_mutex_unlock (&lock);
      return 0;
    }
  clock_gettime (CLOCK_REALTIME, &deadline);
  deadline.tv_sec += timeout;
  while (!head && connected && !read_result)
    {
      if (timeout == 0)
        pthread_cond_wait (&cond, &lock);
      else if (pthread_cond_timedwait (&cond, &lock, &deadline) == ETIMEDOUT)
        {
          pthread_mutex_unlock (&lock);
          return VAC_TIMEOUT;
        }
    }
  if (!connected)
    {
      pthread_mutex_unlock (&lock);
      return VAC_NOT_CONNECTED;
    }
  if (read_result)
    {
      rv = read_result;
      read_result = 0;
      pthread_mutex_unlock (&lock);
      return rv;
    }
  m = head;
  head = m->next;
  if (!head)
    tail = 0;
  /* hand out the body; vac_free gets this pointer back */
  *l = m->len;
  memmove (m, m->data, m->len);
  *p = (char *) m;
  outstanding++;
  reads++;
  pthread_mutex_unlock (&lock);
  return 0;
}

void
vac_free (void *msg)
{
  pthread_mutex_lock (&lock);
  outstanding--;
  pthread_mutex_unlock (&lock);
  free (msg);
}

int
vac_get_msg_index (char *name)
{
  size_t i;
  for (i = 0; i < N_TABLE; i++)
    if (strcmp (table[i].name, name) == 0)
      return table[i].id;
  return -1; /* ~0: unknown name or CRC */
}

int
vac_msg_table_size (void)
{
  return (int) N_TABLE;
}

int
vac_msg_table_max_index (void)
{
  return ID_SW_IF_EVENT;
}

void
vac_rx_suspend (void)
{
}

void
vac_rx_resume (void)
{
}

void
vac_set_error_handler (vac_error_callback_t cb)
{
  (void) cb;
}

/* ---- test controls ---------------------------------------------------------- */

void
fake_vac_reset (void)
{
  pthread_mutex_lock (&lock);
  clear_queue ();
  connected = 0;
  mem_inits = connects = disconnects = writes = reads = 0;
  memset (counts, 0, sizeof (counts));
  connect_result = write_result = read_result = bad_read = hang = connect_delay_ms = 0;
  events_enabled = 0;
  dead = inq = blocked = valve_expired = t_enabled = 0;
  queue_limit = 1024;
  block_ms = 10000;
  vpe_pid = 4242;
  last_name[0] = last_prefix[0] = 0;
  last_rx_qlen = -1;
  had_callback = 0;
  pthread_cond_broadcast (&cond);
  pthread_mutex_unlock (&lock);
}

/* what vac_connect / vac_write return next (0: normal behaviour) */
void
fake_vac_set_connect_result (int rv)
{
  pthread_mutex_lock (&lock);
  connect_result = rv;
  pthread_mutex_unlock (&lock);
}

void
fake_vac_set_connect_delay (int ms)
{
  pthread_mutex_lock (&lock);
  connect_delay_ms = ms;
  pthread_mutex_unlock (&lock);
}

void
fake_vac_set_write_result (int rv)
{
  pthread_mutex_lock (&lock);
  write_result = rv;
  pthread_mutex_unlock (&lock);
}

/* the next vac_read (or the one blocked now) returns rv */
void
fake_vac_set_read_result (int rv)
{
  pthread_mutex_lock (&lock);
  read_result = rv;
  pthread_cond_broadcast (&cond);
  pthread_mutex_unlock (&lock);
}

/* 1: the next vac_read "succeeds" with a NULL buffer; 2: with a negative length */
void
fake_vac_set_bad_read (int mode)
{
  pthread_mutex_lock (&lock);
  bad_read = mode;
  pthread_mutex_unlock (&lock);
}

/* a hung VPP: writes are accepted and never answered */
void
fake_vac_set_hang (int on)
{
  pthread_mutex_lock (&lock);
  hang = on;
  pthread_mutex_unlock (&lock);
}

/* VPP killed (1): writes wait unanswered in its input queue, which fills; connects
   fail. Back (0): a new VPP, the old queue gone, waiting writers go on. */
void
fake_vac_set_dead (int on)
{
  pthread_mutex_lock (&lock);
  dead = on;
  if (!on)
    inq = 0;
  pthread_cond_broadcast (&cond);
  pthread_mutex_unlock (&lock);
}

/* VPP's input queue length, and the safety valve of a wait for room (ms) */
void
fake_vac_set_queue (int limit, int valve_ms)
{
  pthread_mutex_lock (&lock);
  queue_limit = limit;
  block_ms = valve_ms;
  pthread_cond_broadcast (&cond);
  pthread_mutex_unlock (&lock);
}

/* the kernel tid of the i-th thread that waited for room in the queue (0: none) */
long
fake_vac_blocked_tid (int i)
{
  long v;
  pthread_mutex_lock (&lock);
  v = i >= 0 && i < blocked && i < MAX_TIDS ? blocked_tids[i] : 0;
  pthread_mutex_unlock (&lock);
  return v;
}

/* 1: vac_read with a timeout does the real library's timeout-thread handshake */
void
fake_vac_set_timeout_thread (int on)
{
  pthread_mutex_lock (&lock);
  t_enabled = on;
  pthread_mutex_unlock (&lock);
}

/* a restarted VPP has a new pid */
void
fake_vac_set_pid (unsigned int pid)
{
  pthread_mutex_lock (&lock);
  vpe_pid = pid;
  pthread_mutex_unlock (&lock);
}

/* a message from "VPP" (an event, garbage, an unknown id) */
void
fake_vac_inject (const char *data, int len)
{
  pthread_mutex_lock (&lock);
  if (connected)
    enqueue ((const unsigned char *) data, len);
  pthread_mutex_unlock (&lock);
}

/* counters: 0 mem_inits, 1 connects, 2 disconnects, 3 writes, 4 reads, 5 outstanding,
   6 connected, 7 last rx_qlen, 8 connect had a callback, 9 messages in dead VPP's
   queue, 10 waits for room, 11 valve expiries; 1000+id: writes of msg id */
long
fake_vac_stat (int which)
{
  long v = -1;
  pthread_mutex_lock (&lock);
  switch (which)
    {
    case 0: v = mem_inits; break;
    case 1: v = connects; break;
    case 2: v = disconnects; break;
    case 3: v = writes; break;
    case 4: v = reads; break;
    case 5: v = outstanding; break;
    case 6: v = connected; break;
    case 7: v = last_rx_qlen; break;
    case 8: v = had_callback; break;
    case 9: v = inq; break;
    case 10: v = blocked; break;
    case 11: v = valve_expired; break;
    default:
      if (which >= 1000 && which < 2024)
        v = counts[which - 1000];
    }
  pthread_mutex_unlock (&lock);
  return v;
}

const char *
fake_vac_last (int which)
{
  return which == 0 ? last_name : last_prefix;
}
