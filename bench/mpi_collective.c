/* Open MPI's allreduce, broadcast and allgather timed like bench.allreduce's ranks.
 *
 *   mpicc -O2 -o /tmp/mpi_collective bench/mpi_collective.c
 *   mpirun ... /tmp/mpi_collective allreduce 4194304,33554432 [repeats]
 *
 * bench.allreduce --nodes ... --algos ...,mpi builds and runs it across emulated
 * nodes. The rules match bench/allreduce.py and ../shared/bench/peer_allreduce.py:
 * float32 (sum for allreduce), 3 warm-up calls, then a barrier before every timed
 * call and rank 0's median (a broadcast timed with a barrier after it); bytes are
 * per rank's buffer (allgather: its block).
 * Rank 0 prints one JSON line per size; the Python side adds the figures.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int compare(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static int repeats_for(long bytes) {
  long r = (64L << 20) / (bytes > 0 ? bytes : 1);
  return (int)(r < 5 ? 5 : r > 200 ? 200 : r);
}

static void call(const char* op, float* x, float* y, int count, int size) {
  if (strcmp(op, "allreduce") == 0) {
    MPI_Allreduce(x, y, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  } else if (strcmp(op, "broadcast") == 0) {
    MPI_Bcast(x, count, MPI_FLOAT, 0, MPI_COMM_WORLD);
  } else {
    MPI_Allgather(x, count, MPI_FLOAT, y, count, MPI_FLOAT, MPI_COMM_WORLD);
  }
  (void)size;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (argc < 3) {
    if (rank == 0) fprintf(stderr, "usage: %s allreduce|broadcast|allgather SIZES [repeats]\n", argv[0]);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  const char* op = argv[1];
  const int fixed = argc > 3 ? atoi(argv[3]) : 0;
  char* sizes = strdup(argv[2]);
  for (char* item = strtok(sizes, ","); item != NULL; item = strtok(NULL, ",")) {
    const long bytes = atol(item);
    const int count = (int)(bytes / 4);
    const long out_count = strcmp(op, "allgather") == 0 ? (long)count * size : count;
    float* x = malloc((size_t)count * 4);
    float* y = malloc((size_t)out_count * 4);
    for (int i = 0; i < count; ++i) x[i] = 1.0f;
    for (int i = 0; i < 3; ++i) call(op, x, y, count, size);
    const int repeats = fixed > 0 ? fixed : repeats_for(bytes);
    double* times = malloc(sizeof(double) * (size_t)repeats);
    for (int i = 0; i < repeats; ++i) {
      MPI_Barrier(MPI_COMM_WORLD);
      const double started = MPI_Wtime();
      call(op, x, y, count, size);
      /* A broadcast ends when the last rank has the bytes, not when the root sent them. */
      if (strcmp(op, "broadcast") == 0) MPI_Barrier(MPI_COMM_WORLD);
      times[i] = MPI_Wtime() - started;
    }
    qsort(times, (size_t)repeats, sizeof(double), compare);
    const double median =
        repeats % 2 ? times[repeats / 2] : (times[repeats / 2 - 1] + times[repeats / 2]) / 2;
    if (rank == 0) {
      printf("{\"op\": \"%s\", \"backend\": \"openmpi\", \"np\": %d, \"bytes\": %ld, "
             "\"median_s\": %.7f}\n",
             op, size, bytes, median);
      fflush(stdout);
    }
    free(times);
    free(x);
    free(y);
  }
  free(sizes);
  MPI_Finalize();
  return 0;
}
