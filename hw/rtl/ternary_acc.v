// mmfree reference core: ternary accumulate, the operation that replaces multiply-accumulate
// in a MatMul-free BitLinear. acc[row] = sum_k T[row][k] * x[k], T in {-1, 0, +1}, x int8.
//
// Weights arrive verbatim in the library's TQ2 format (include/mmfree/ternary_format.hpp):
// each byte holds four 2-bit digits d = w + 1, byte j of a 64-byte block holding weights
// j, j+64, j+128, j+192 of that block. A beat carries BYTES consecutive packed bytes
// (LANES = 4 * BYTES weights) and the LANES activations that pair with them: activation
// lane k*BYTES + i goes with digit k (bits 2k+1:2k) of byte i. The driver gathers the
// activations in that order; the weight stream is the file's bytes as they are.
//
// Protocol: in_valid/in_ready and out_valid/out_ready handshakes (a transfer happens on a
// rising clock edge where both are high). in_last marks the last beat of a row; one
// out_acc per row follows, in order. Rows are independent; the accumulator clears itself.
//
// Built for a real clock: every path is short and registered.
//   r0    the beat, registered straight off the ports
//   r1    per lane a sign selection (+x, -x or 0): no multipliers anywhere
//   tree  a balanced adder tree, registered TREE_STAGES times (spread evenly over its levels)
//   acc   the accumulator, in two half-width adders a cycle apart; a row's total goes into
//   fifo  FIFO_DEPTH results, which out_valid / out_acc read directly.
// The pipeline never stalls. Instead a credit counter (`pending`: rows taken in and not yet
// handed out) holds in_ready low once every FIFO slot is spoken for, so no row can find the
// FIFO full. in_ready is a function of registers only: there is no combinational path from
// out_ready (or anything else on the ports) to in_ready. Throughput is one beat per cycle
// whenever the output keeps up, even for rows of a single beat when FIFO_DEPTH exceeds the
// latency (TREE_STAGES + 5 cycles from a row's last beat to its out_valid).
module ternary_acc #(
    parameter integer BYTES = 4,                       // packed bytes per beat; LANES = 4 * BYTES
    parameter integer ACC_W = 32,                      // accumulator width
    parameter integer TREE_STAGES = $clog2(4 * BYTES), // registers in the adder tree: 1 .. log2(LANES)
    parameter integer FIFO_DEPTH = 16                  // result slots: a power of two >= 2
) (
    input  wire                    clk,
    input  wire                    rst,       // synchronous, active high; may come mid-row
    input  wire                    in_valid,
    output wire                    in_ready,
    input  wire [8*BYTES-1:0]      in_w,      // BYTES packed TQ2 bytes
    input  wire [8*4*BYTES-1:0]    in_x,      // LANES int8 activations
    input  wire                    in_last,
    output wire                    out_valid,
    input  wire                    out_ready,
    output wire signed [ACC_W-1:0] out_acc
);
  localparam integer LANES = 4 * BYTES;
  localparam integer LOG = $clog2(LANES);
  localparam integer SUM_W = 9 + LOG;  // |x| <= 128 per lane: 9 bits signed, +1 bit per tree level
  localparam integer AW = $clog2(FIFO_DEPTH);

  // ---- parameter checks, at elaboration: instantiating an undefined module stops every tool
  // (yosys, Verilator) with the module's name as the message.
  generate
    if (BYTES < 1 || BYTES > 64 || (64 % BYTES) != 0 || (BYTES & (BYTES - 1)) != 0) begin : bad_bytes
      BYTES_must_be_a_power_of_two_that_divides_64 check();
    end
    if (ACC_W < SUM_W + 1 || ACC_W > 64) begin : bad_acc_w
      ACC_W_must_hold_a_beat_sum_and_at_most_64_bits check();
    end
    if (TREE_STAGES < 1 || TREE_STAGES > LOG) begin : bad_tree_stages
      TREE_STAGES_must_be_between_1_and_log2_of_the_lanes check();
    end
    if (FIFO_DEPTH < 2 || (FIFO_DEPTH & (FIFO_DEPTH - 1)) != 0) begin : bad_fifo_depth
      FIFO_DEPTH_must_be_a_power_of_two_of_at_least_2 check();
    end
  endgenerate

  // ---- credits: a beat is taken only while a FIFO slot is free for every row in flight ------
  reg  [AW:0] pending;  // rows whose last beat was taken and whose result has not left
  assign in_ready = !pending[AW];  // pending < FIFO_DEPTH (it never exceeds it)
  wire in_fire = in_valid && in_ready;
  wire out_fire;

  // ---- r0: the beat off the ports ----------------------------------------------------------
  reg                 r0_valid, r0_last;
  reg [8*BYTES-1:0]   r0_w;
  reg [8*LANES-1:0]   r0_x;
  always @(posedge clk) begin
    r0_valid <= !rst && in_fire;
    if (in_fire) begin
      r0_w <= in_w;
      r0_x <= in_x;
      r0_last <= in_last;
    end
  end

  // ---- r1: lane terms --------------------------------------------------------------------
  // Heap-ordered adder tree: node[0] is the sum, the leaves node[LANES-1 .. 2*LANES-2] are the
  // registered lane terms.
  wire signed [SUM_W-1:0] node [0:2*LANES-2] /* verilator split_var */;
  reg r1_valid, r1_last;
  always @(posedge clk) begin
    r1_valid <= !rst && r0_valid;
    r1_last <= r0_last;
  end
  genvar g;
  generate
    for (g = 0; g < LANES; g = g + 1) begin : lane
      localparam integer K = g / BYTES;  // digit index within the byte
      localparam integer I = g % BYTES;  // byte index within the beat
      wire [1:0] d = r0_w[8*I + 2*K +: 2];
      wire signed [7:0] x = r0_x[8*g +: 8];
      wire signed [SUM_W-1:0] xs = {{(SUM_W-8){x[7]}}, x};
      // d = 2: +x, d = 0: -x, d = 1: 0. The unused value 3 (never written by the library, refused
      // in files) also contributes 0: defined, and the cheapest selection.
      reg signed [SUM_W-1:0] term;
      always @(posedge clk) term <= (d == 2'd2) ? xs : (d == 2'd0) ? -xs : {SUM_W{1'b0}};
      assign node[LANES-1+g] = term;
    end

    // ---- tree: level k (1 = just above the leaves, LOG = the root) is registered when it ends
    // one of TREE_STAGES equal slices of the levels; the root always is.
    for (g = 0; g < LANES - 1; g = g + 1) begin : tree
      localparam integer DEPTH = $clog2(g + 2) - 1;  // floor(log2(g + 1)): the root is 0
      localparam integer LEVEL = LOG - DEPTH;
      wire signed [SUM_W-1:0] s = node[2*g+1] + node[2*g+2];
      if ((LEVEL * TREE_STAGES) / LOG != ((LEVEL - 1) * TREE_STAGES) / LOG) begin : reg_level
        reg signed [SUM_W-1:0] q;
        always @(posedge clk) q <= s;
        assign node[g] = q;
      end else begin : comb_level
        assign node[g] = s;
      end
    end
  endgenerate

  // valid and last travel beside the tree's registers.
  reg [TREE_STAGES-1:0] t_valid, t_last;
  generate
    if (TREE_STAGES == 1) begin : one_stage
      always @(posedge clk) begin
        t_valid <= !rst && r1_valid;
        t_last <= r1_last;
      end
    end else begin : stages
      always @(posedge clk) begin
        t_valid <= rst ? {TREE_STAGES{1'b0}} : {t_valid[TREE_STAGES-2:0], r1_valid};
        t_last <= {t_last[TREE_STAGES-2:0], r1_last};
      end
    end
  endgenerate
  wire tv = t_valid[TREE_STAGES-1];
  wire tl = t_last[TREE_STAGES-1];

  // ---- acc: the accumulator, split in two halves a cycle apart -----------------------------
  // A 32-bit carry chain in one cycle was the critical path (7.7 ns on an iCE40 HX8K). The low
  // half adds each beat's low bits and registers its carry; the high half adds the beat's high
  // bits and that carry one cycle later. A row's total is whole once its high half is added.
  localparam integer LO = ACC_W / 2;
  localparam integer HI = ACC_W - LO;
  wire signed [ACC_W-1:0] x_ext = {{(ACC_W-SUM_W){node[0][SUM_W-1]}}, node[0]};
  reg  [LO-1:0] acc_lo, lo_total;
  reg  [HI-1:0] acc_hi, a_hi;
  reg           a_valid, a_last, a_carry;
  wire [LO:0]   lo_sum = {1'b0, acc_lo} + {1'b0, x_ext[LO-1:0]};
  always @(posedge clk) begin
    a_valid <= !rst && tv;
    a_last <= tl;
    a_carry <= lo_sum[LO];
    a_hi <= x_ext[ACC_W-1:LO];
    if (rst) acc_lo <= {LO{1'b0}};
    else if (tv) acc_lo <= tl ? {LO{1'b0}} : lo_sum[LO-1:0];
    if (tv && tl) lo_total <= lo_sum[LO-1:0];
  end
  reg signed [ACC_W-1:0] total;
  reg push;
  wire [HI-1:0] hi_sum = acc_hi + a_hi + {{(HI-1){1'b0}}, a_carry};
  always @(posedge clk) begin
    push <= !rst && a_valid && a_last;
    if (rst) acc_hi <= {HI{1'b0}};
    else if (a_valid) acc_hi <= a_last ? {HI{1'b0}} : hi_sum;
    if (a_valid && a_last) total <= {hi_sum, lo_total};
  end

  // ---- fifo ------------------------------------------------------------------------------
  reg signed [ACC_W-1:0] slot [0:FIFO_DEPTH-1];
  reg [AW:0] wr, rd;  // one extra bit tells full from empty
  assign out_valid = wr != rd;
  assign out_acc = slot[rd[AW-1:0]];  // a slot is never written while it is the head
  assign out_fire = out_valid && out_ready;
  always @(posedge clk) begin
    if (push) slot[wr[AW-1:0]] <= total;
    if (rst) begin
      wr <= 0;
      rd <= 0;
      pending <= 0;
    end else begin
      if (push) wr <= wr + 1'b1;
      if (out_fire) rd <= rd + 1'b1;
      pending <= pending + {{AW{1'b0}}, in_fire && in_last} - {{AW{1'b0}}, out_fire};
    end
  end
endmodule
