/* smartbin_simavr: run the compiled smartbin_fw (.elf) on a simulated ATmega328P (simavr), with UART0 on
   a pseudo-terminal published as /tmp/simavr-uart0, so host code and tests can talk to the real firmware
   without a board (see ../README.md). Prints "PTY <path>" on stdout once the port exists (the fixed symlink
   /tmp/simavr-uart0 is shared by every simavr on the machine; use the printed path).

   Models two inputs: the lid reed switch (PD3 = D3, closed while the lid servo pulse on D10 (OC1B) is
   below ~1100 us, i.e. the lid is down) and an item breaking the drop beam (PD2 = D2, a 2 ms LOW pulse
   every 1.5 s). Ultrasonic echoes are absent (TEL d=-1, then FLT sensor_timeout) and the ADC reads 0
   (t=-50.0). No bootloader runs, so opening the port does not reset the MCU; the RESET command does.
   The simulated clock is held to wall time (a real Uno's pace), so millis() timings match a board's.

   Build: python -m smartbin_daemon.hardware.arduino.firmware_build OUT --simavr
          (gcc -O2 -Wall -I/usr/include/simavr -o smartbin_simavr smartbin_simavr.c \
              -lsimavrparts -lsimavr -lpthread -lutil)
   Run:   ./smartbin_simavr OUT/smartbin_fw.elf */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "sim_avr.h"
#include "sim_elf.h"
#include "sim_cycle_timers.h"
#include "avr_ioport.h"
#include "avr_timer.h"
#include "parts/uart_pty.h"

static uart_pty_t uart_pty;
static avr_irq_t *lid_switch, *drop_beam;
static int lid_closed = 1;

/* The lid servo is Timer1's OC1B (D10) in fast PWM with 0.5 us ticks: simavr reports each OCR1B write as
   TIMER_IRQ_OUT_PWM1 (it does not toggle the pin for hardware PWM), so the pulse width is the value / 2. */
static void lid_servo_pwm(avr_irq_t *irq, uint32_t value, void *param) {
  (void)irq;
  (void)param;
  uint32_t width_us = value / 2;
  if (width_us > 300 && width_us < 3000) lid_closed = width_us < 1100;
}

static int beam_state = 1;
static void drive_port_d(avr_t *avr) {
  avr_ioport_external_t ext = {.name = 'D', .mask = (1 << 2) | (1 << 3),
                               .value = (uint8_t)((beam_state << 2) | ((lid_closed ? 0 : 1) << 3))};
  avr_ioctl(avr, AVR_IOCTL_IOPORT_SET_EXTERNAL('D'), &ext);
  avr_raise_irq(lid_switch, lid_closed ? 0 : 1);
  avr_raise_irq(drop_beam, beam_state);
}

static avr_cycle_count_t switch_tick(avr_t *avr, avr_cycle_count_t when, void *param) {
  (void)param;
  drive_port_d(avr);
  return when + ((avr_cycle_count_t)(10000) * 16);
}

static avr_cycle_count_t beam_tick(avr_t *avr, avr_cycle_count_t when, void *param) {
  (void)param;
  beam_state = !beam_state;
  drive_port_d(avr);
  return when + (avr_cycle_count_t)(beam_state ? 1500000 : 2000) * 16;
}

/* Sleeps while the simulated clock is ahead of the wall clock (simavr alone runs a busy loop flat out).
   t0 is the wall time of cycle 0; a reset that restarts the cycle count moves it. */
static void hold_to_wall_time(avr_t *avr, struct timespec *t0, avr_cycle_count_t *last) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  if (avr->cycle < *last) *t0 = now;
  *last = avr->cycle;
  double wall = (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
  double ahead = (double)avr->cycle / avr->frequency - wall;
  if (ahead > 0.001) {
    struct timespec nap = {.tv_sec = (time_t)ahead, .tv_nsec = (long)((ahead - (double)(time_t)ahead) * 1e9)};
    nanosleep(&nap, NULL);
  }
}

int main(int argc, char **argv) {
  elf_firmware_t f;
  memset(&f, 0, sizeof f);
  if (argc < 2 || elf_read_firmware(argv[1], &f) != 0) { fprintf(stderr, "usage: run fw.elf\n"); return 2; }
  strcpy(f.mmcu, "atmega328p");
  f.frequency = 16000000;
  avr_t *avr = avr_make_mcu_by_name(f.mmcu);
  avr_init(avr);
  avr_load_firmware(avr, &f);
  uart_pty_init(avr, &uart_pty);
  uart_pty_connect(&uart_pty, '0');
  printf("PTY %s\n", uart_pty.pty.slavename);
  fflush(stdout);
  lid_switch = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('D'), 3);
  drop_beam = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('D'), 2);
  avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_TIMER_GETIRQ('1'), TIMER_IRQ_OUT_PWM1), lid_servo_pwm, NULL);
  drive_port_d(avr);
  avr_cycle_timer_register_usec(avr, 1000, switch_tick, NULL);
  avr_cycle_timer_register_usec(avr, 1000, beam_tick, NULL);
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  avr_cycle_count_t next_sync = 0, last_cycle = 0;
  for (unsigned long n = 0;; n++) {
    /* a watchdog reset (the RESET command) clears all cycle timers: put ours back */
    if ((n & 0xFFFF) == 0 && avr_cycle_timer_status(avr, beam_tick, NULL) == 0) {
      avr_cycle_timer_register_usec(avr, 1000, switch_tick, NULL);
      avr_cycle_timer_register_usec(avr, 1000, beam_tick, NULL);
    }
    if (avr->cycle >= next_sync || avr->cycle < last_cycle) {  /* every simulated millisecond */
      hold_to_wall_time(avr, &t0, &last_cycle);
      next_sync = avr->cycle + 16000;
    }
    int state = avr_run(avr);
    if (state == cpu_Done || state == cpu_Crashed) { fprintf(stderr, "cpu state %d\n", state); break; }
  }
  return 0;
}
